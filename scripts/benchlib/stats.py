"""Pure statistics for the report: percentiles, summaries, ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linearly interpolated.

    NaN for no values: an empty sample has no percentile, and a report must not invent one.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = (n - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    frac = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


@dataclass(frozen=True, slots=True)
class Summary:
    """Distribution of one measured quantity (milliseconds, unless said otherwise)."""

    n: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


def summarize(values: Sequence[float]) -> Summary:
    """Count, p50/p95/p99, max and mean of ``values`` (NaN when empty)."""
    ordered = sorted(values)
    if not ordered:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        n=len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        max=ordered[-1],
        mean=math.fsum(ordered) / len(ordered),
    )


def ratio(numerator: float | None, denominator: float | None) -> float:
    """``numerator / denominator``; NaN when either is missing, NaN, or the divisor is 0."""
    if numerator is None or denominator is None:
        return math.nan
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def format_ratio(value: float) -> str:
    """``1.23x``, or ``n/a`` for a ratio that could not be computed."""
    if math.isnan(value) or math.isinf(value):
        return "n/a"
    return f"{value:.2f}x"


def format_number(value: float | None, digits: int = 1) -> str:
    """A figure for a table: fixed decimals, thousands separated, ``n/a`` when missing."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def rate(count: int, seconds: float) -> float:
    """``count`` per second over ``seconds`` (NaN for an empty interval)."""
    return count / seconds if seconds > 0 else math.nan


@dataclass(frozen=True, slots=True)
class HistogramWindow:
    """What a Prometheus histogram of the service recorded between two scrapes."""

    count: float
    total: float
    buckets: tuple[tuple[float, float], ...]
    """(upper bound, cumulative count) in the window, by bound, ``+Inf`` last."""

    @property
    def mean(self) -> float:
        """The mean observation; NaN when there was none."""
        return self.total / self.count if self.count else math.nan

    def quantile_bound(self, q: float) -> float:
        """The upper bound of the bucket holding the ``q``-th quantile (0..1): the
        quantile is at most this. NaN when there was no observation."""
        if self.count <= 0:
            return math.nan
        return next(
            (bound for bound, cumulative in self.buckets if cumulative >= q * self.count),
            math.nan,
        )


def histogram_window(
    name: str, before: dict[str, float], after: dict[str, float]
) -> HistogramWindow | None:
    """The observations of histogram ``name`` between two scrapes (metric name -> value);
    None when either scrape failed (an empty one)."""
    if not before or not after:
        return None
    prefix = f'{name}_bucket{{le="'
    buckets = sorted(
        (float(key[len(prefix) : -2]), value - before.get(key, 0.0))
        for key, value in after.items()
        if key.startswith(prefix)
    )
    return HistogramWindow(
        count=after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0),
        total=after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0),
        buckets=tuple(buckets),
    )
