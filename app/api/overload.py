"""Load shedding: past saturation, new generations get 429 and running streams keep pace.

A process serving SSE is saturated when it falls behind, in one of two places: its event
loop (every callback, so every stream, commit and POST, runs late by the same amount) or
its log writer (appends wait longer and longer for their commit, which every stream's
next event waits for). Admitting more work then slows everyone down. So every 25 ms the
process takes the larger of how late its timer fired (the loop's lag) and how long the
appends being committed have waited, smooths it, and while that is past a threshold,
and for a second after, it refuses new generations with 429 and ``Retry-After: 1``,
leaving the streams it has room to finish. The second's hold keeps it from flapping on
every tick and matches what it tells clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class LagGauge:
    """The smoothed delay (loop lag or write delay), and whether it means saturation (pure)."""

    threshold_s: float
    """Saturated above this smoothed lag; 0 turns shedding off."""
    hold_s: float = 1.0
    """It stays saturated this long after the smoothed lag was last over the threshold."""
    smoothing: float = 0.2
    """Weight of each new sample in the moving average."""
    lag_s: float = 0.0
    _until: float = float("-inf")

    def observe(self, lag_s: float, now: float) -> None:
        """Fold in one measurement, taken at ``now`` (monotonic), of how far behind it runs."""
        self.lag_s += self.smoothing * (max(0.0, lag_s) - self.lag_s)
        if self.threshold_s > 0 and self.lag_s > self.threshold_s:
            self._until = now + self.hold_s

    def saturated(self, now: float) -> bool:
        """Whether to shed at ``now``."""
        return now < self._until


class LoadShedder:
    """Measures how far behind the process runs; ``saturated`` says when to shed."""

    def __init__(
        self,
        threshold_s: float,
        *,
        write_delay_s: Callable[[], float] = lambda: 0.0,
        tick_s: float = 0.025,
    ) -> None:
        self.gauge = LagGauge(threshold_s=threshold_s)
        self.tick_s = tick_s
        self._write_delay_s = write_delay_s
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
            self.gauge.observe(max(now - started - self.tick_s, self._write_delay_s()), now)
