"""Load shedding: past saturation, new generations get 429 and running streams keep pace.

A process serving SSE from one event loop is saturated when its loop falls behind: every
callback, and so every stream, every commit and every POST, runs late by the same amount.
Admitting more work then slows everyone down. So the process measures how late a short
timer fires (the loop's lag), smooths it, and while the smoothed lag is past a threshold,
and for a second after, it refuses new generations with 429 and ``Retry-After: 1``,
leaving the streams it has room to finish. The second's hold keeps it from flapping on
every tick and matches what it tells clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass


@dataclass(slots=True)
class LagGauge:
    """The loop's smoothed lag, and whether it says the process is saturated (pure)."""

    threshold_s: float
    """Saturated above this smoothed lag; 0 turns shedding off."""
    hold_s: float = 1.0
    """It stays saturated this long after the smoothed lag was last over the threshold."""
    smoothing: float = 0.2
    """Weight of each new sample in the moving average."""
    lag_s: float = 0.0
    _until: float = float("-inf")

    def observe(self, lag_s: float, now: float) -> None:
        """Fold in one measurement, taken at ``now`` (monotonic), of how late a timer fired."""
        self.lag_s += self.smoothing * (max(0.0, lag_s) - self.lag_s)
        if self.threshold_s > 0 and self.lag_s > self.threshold_s:
            self._until = now + self.hold_s

    def saturated(self, now: float) -> bool:
        """Whether to shed at ``now``."""
        return now < self._until


class LoadShedder:
    """Measures the event loop's lag in the background; ``saturated`` says when to shed."""

    def __init__(self, threshold_s: float, *, tick_s: float = 0.025) -> None:
        self.gauge = LagGauge(threshold_s=threshold_s)
        self.tick_s = tick_s
        self.shed = 0
        """Requests refused because the process was saturated."""
        self._task: asyncio.Task[None] | None = None

    @property
    def saturated(self) -> bool:
        """Whether new generations should be refused now."""
        return self.gauge.saturated(time.monotonic())

    def refuse(self) -> None:
        """Count one refused request."""
        self.shed += 1

    async def start(self) -> None:
        """Start measuring."""
        if self._task is None:
            self._task = asyncio.create_task(self._measure(), name="loop-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _measure(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.gauge.observe(now - started - self.tick_s, now)
