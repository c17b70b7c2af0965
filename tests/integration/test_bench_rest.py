"""The at-rest memory benchmark against the real service: every stream opens and is held."""

from __future__ import annotations

import pytest

from scripts.benchlib.rest import measure

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_memory_at_rest_holds_every_stream_open_and_reads_the_growth() -> None:
    result = await measure(streams=60, workers=1, pace_ms=20_000)
    assert result.streams == 60
    assert result.idle_kib > 10_000  # a Python service: tens of MiB idle
    assert result.open_kib > result.idle_kib
    assert 0 < result.kb_per_stream < 1_000
