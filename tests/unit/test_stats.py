"""Percentiles and histograms."""

from __future__ import annotations

from app.domain.stats import Histogram, distribution, percentile


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert percentile([], 50) is None


def test_distribution() -> None:
    summary = distribution([3, 1, 2, 10])
    assert (summary.count, summary.p50, summary.max, summary.mean) == (4, 2, 10, 4)
    assert distribution([]).p99 is None


def test_histogram_exposition_is_cumulative() -> None:
    h = Histogram([1, 5])
    for value in [0.5, 1, 3, 9]:
        h.observe(value)
    assert h.exposition("x", "help") == [
        "# HELP x help",
        "# TYPE x histogram",
        'x_bucket{le="1"} 2',
        'x_bucket{le="5"} 3',
        'x_bucket{le="+Inf"} 4',
        "x_sum 13.5",
        "x_count 4",
    ]
