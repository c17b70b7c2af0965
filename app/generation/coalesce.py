"""Coalescing model tokens into flushes: one per interval, or sooner when the buffer is full.

Whatever the model's token rate, a generation then appends at most about
``1 / interval`` text events per second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from app.generation.providers.base import ModelOutput, Token
from app.wakeup import Wakeup


class Flush:
    """Text gathered since the last flush, and what else the model sent meanwhile."""

    __slots__ = ("others", "text", "tokens")

    def __init__(self, text: str, tokens: int, others: list[ModelOutput]) -> None:
        self.text = text
        self.tokens = tokens
        self.others = others


async def coalesce(
    source: AsyncIterator[ModelOutput], *, interval_s: float, max_chars: int
) -> AsyncIterator[Flush]:
    """Batches of ``source``: text joined, non-text outputs kept in order after it."""
    texts: list[str] = []
    others: list[ModelOutput] = []
    size = 0
    tokens = 0
    ready = Wakeup()
    urgent = Wakeup()
    finished = False

    async def pump() -> None:
        nonlocal size, tokens, finished
        try:
            async for output in source:
                if isinstance(output, Token):
                    texts.append(output.text)
                    size += len(output.text)
                    tokens += 1
                    if size >= max_chars:
                        urgent.set()
                else:
                    others.append(output)
                ready.set()
        finally:
            finished = True
            ready.set()
            urgent.set()

    task = asyncio.create_task(pump())
    try:
        while True:
            await ready.wait()
            # A timed Wakeup, not asyncio.timeout: no exception per flush (a timeout's
            # exception and traceback form reference cycles, which only the cycle
            # collector frees: garbage at 20 flushes/s per stream).
            await urgent.wait(interval_s)
            flush = Flush("".join(texts), tokens, list(others))
            texts.clear()
            others.clear()
            size = tokens = 0
            ready.clear()
            urgent.clear()
            done = finished
            if flush.text or flush.others:
                yield flush
            if done:
                break
        await task  # re-raises the source's exception, if any
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
