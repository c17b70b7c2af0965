"""Pure statistics: percentile summaries (audit) and cumulative histograms (metrics)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import msgspec


class Distribution(msgspec.Struct, frozen=True, kw_only=True):
    """Count and nearest-rank percentiles of a set of values."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values; None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def distribution(values: Iterable[float]) -> Distribution:
    """The percentile summary of ``values``."""
    ordered = sorted(values)
    return Distribution(
        count=len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        max=float(ordered[-1]) if ordered else None,
        mean=sum(ordered) / len(ordered) if ordered else None,
    )


class Histogram:
    """A cumulative histogram in the Prometheus model (buckets by upper bound, +Inf last)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.count += 1
        self.sum += value
        for n, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[n] += 1
                return
        self.counts[-1] += 1

    def exposition(self, name: str, help_text: str) -> list[str]:
        """The histogram in Prometheus text format."""
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.sum!r}")
        lines.append(f"{name}_count {self.count}")
        return lines
