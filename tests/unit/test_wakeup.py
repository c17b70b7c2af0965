"""``Wakeup``: the one-waiter flag behind every mailbox and token batch."""

from __future__ import annotations

import asyncio

import pytest

from app.wakeup import Wakeup

pytestmark = pytest.mark.anyio


async def test_a_set_flag_answers_at_once_until_cleared() -> None:
    flag = Wakeup()
    flag.set()
    assert await flag.wait(0.0) and await flag.wait()
    flag.clear()
    assert not flag.is_set()
    assert await flag.wait(0.0) is False, "cleared, and no one sets it"


async def test_set_wakes_the_waiter() -> None:
    flag = Wakeup()
    waiter = asyncio.create_task(flag.wait(60.0))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiter.done()
    flag.set()
    assert await waiter is True


async def test_a_timed_wait_ends_false_and_the_flag_takes_a_new_waiter() -> None:
    flag = Wakeup()
    assert await flag.wait(0.01) is False
    later = asyncio.get_running_loop().call_soon(flag.set)
    assert await flag.wait(60.0) is True
    later.cancel()


async def test_a_second_waiter_is_refused() -> None:
    flag = Wakeup()
    first = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one waiter"):
        await flag.wait()
    flag.set()
    assert await first


async def test_a_cancelled_waiter_leaves_the_flag_usable() -> None:
    flag = Wakeup()
    waiter = asyncio.create_task(flag.wait(60.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    flag.set()
    assert await flag.wait(0.0)
