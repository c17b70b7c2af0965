"""Group commit batches concurrent appends: transactions are far fewer than events."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from tests.conftest import BACKENDS
from tests.support.invariants import assert_well_formed
from tests.support.sse_client import read_stream

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
]


def metric(text: str, name: str) -> int:
    match = re.search(rf"^{name} (\d+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return int(match.group(1))


async def test_concurrent_generations_share_commits(service_factory: Any) -> None:
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="0",
        GENSTREAM_FLUSH_INTERVAL_MS="0",
        GENSTREAM_RUNNERS="32",
        GENSTREAM_MAX_ACTIVE_PER_USER="64",
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
        before = (await client.get("/metrics")).text
        ids = [
            (await client.post("/assistant/request", json={"prompt": f"page {n}"})).json()[
                "request_id"
            ]
            for n in range(32)
        ]
        reads = await asyncio.gather(
            *(read_stream(client, f"/assistant/stream/{rid}") for rid in ids)
        )
        for rid, read in zip(ids, reads, strict=True):
            assert_well_formed(read.events, rid)
        after = (await client.get("/metrics")).text
    commits = metric(after, "genstream_log_commits_total") - metric(
        before, "genstream_log_commits_total"
    )
    events = metric(after, "genstream_log_events_total") - metric(
        before, "genstream_log_events_total"
    )
    assert events == sum(len(r.events) for r in reads)
    assert commits * 4 <= events, f"{commits} commits for {events} events"
    assert metric(after, "genstream_log_largest_batch") > 1
