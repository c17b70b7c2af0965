"""A wake-up flag for one waiting task: what ``asyncio.Event`` does, in a fraction of its memory.

Every open stream has a few of these (its subscriber's mailbox, its generation's token
batching). An ``asyncio.Event`` carries an instance dict and a deque of waiters, about
a kilobyte together even when nobody waits; this is two slots, and a future only while
its one task waits. A timed wait ends through a timer callback rather than
``asyncio.timeout``, so no exception and traceback are made, per wait, for the cycle
collector to free.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """A flag that one task at a time waits for; ``set`` wakes it, ``clear`` resets it."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[bool] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the flag is set, at most ``timeout_s``; whether it is set."""
        if self._set:
            return True
        if self._waiter is not None:
            raise RuntimeError("a Wakeup has one waiter at a time")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
