"""Coalescing bounds the event rate whatever the token rate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.domain.events import Usage
from app.generation.coalesce import Flush, coalesce
from app.generation.providers.base import Finished, ModelOutput, Token

pytestmark = pytest.mark.anyio


async def burst(n: int) -> AsyncIterator[ModelOutput]:
    for _ in range(n):
        yield Token("ab")
    yield Finished(usage=Usage(completion_tokens=n))


async def collect(source: AsyncIterator[ModelOutput], **kw: float) -> list[Flush]:
    return [f async for f in coalesce(source, **kw)]  # type: ignore[arg-type]


async def test_a_fast_model_is_flushed_by_size() -> None:
    flushes = await collect(burst(1000), interval_s=3600, max_chars=100)
    assert "".join(f.text for f in flushes) == "ab" * 1000
    assert sum(f.tokens for f in flushes) == 1000
    assert len(flushes) <= 21  # 2000 chars / 100 per flush, plus the remainder
    assert isinstance(flushes[-1].others[-1], Finished)


async def test_a_stalled_model_still_gets_its_text_flushed() -> None:
    resume = asyncio.Event()

    async def stalls() -> AsyncIterator[ModelOutput]:
        yield Token("first ")
        await resume.wait()
        yield Token("second")

    flushes = coalesce(stalls(), interval_s=0.01, max_chars=10_000)
    first = await anext(flushes)
    assert first.text == "first "
    resume.set()
    rest = [f async for f in flushes]
    assert "".join(f.text for f in rest) == "second"


async def test_a_failing_model_raises_after_its_text() -> None:
    async def fails() -> AsyncIterator[ModelOutput]:
        yield Token("partial")
        raise RuntimeError("model went away")

    seen: list[str] = []
    with pytest.raises(RuntimeError, match="went away"):
        async for flush in coalesce(fails(), interval_s=3600, max_chars=10_000):
            seen.append(flush.text)
    assert seen == ["partial"]
