"""Resume exactness: random disconnects plus Last-Event-ID give the uninterrupted stream."""

from __future__ import annotations

import asyncio
import random
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

PROMPTS = [
    f"a landing page for shop number {n} selling {w}"
    for n, w in enumerate(["tea", "bikes", "maps", "lamps", "socks", "books", "bread", "kites"] * 2)
]


async def read_with_drops(
    client: httpx.AsyncClient, request_id: str, rng: random.Random, use_query: bool
) -> tuple[list[dict[str, Any]], int]:
    """Read the whole stream, dropping the connection after a random few events each time."""
    events: list[dict[str, Any]] = []
    connections = 0
    while not events or events[-1]["type"] not in {"complete", "error", "cancelled"}:
        last = events[-1]["seq"] if events else None
        read = await read_stream(
            client,
            f"/assistant/stream/{request_id}",
            last_event_id=last,
            max_events=rng.randint(1, 6),
            use_query=use_query,
        )
        connections += 1
        assert read.status == 200, read.status
        assert read.frames[0].retry is not None, "every connection starts with retry"
        events.extend(read.events)
    return events, connections


async def test_random_disconnects_and_resumes_equal_the_uninterrupted_stream(
    service_factory: Any,
) -> None:
    service = service_factory(
        GENSTREAM_MAX_ACTIVE_PER_USER="100", GENSTREAM_DEMO_TOKEN_DELAY_MS="3"
    )
    rng = random.Random(20261121)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ids = []
        for prompt in PROMPTS:
            response = await client.post("/assistant/request", json={"prompt": prompt})
            assert response.status_code == 201
            ids.append(response.json()["request_id"])

        async def one(n: int, request_id: str) -> None:
            whole, (dropped, connections) = await asyncio.gather(
                read_stream(client, f"/assistant/stream/{request_id}"),
                read_with_drops(client, request_id, random.Random(rng.random()), n % 2 == 0),
            )
            assert whole.status == 200
            assert_well_formed(whole.events, request_id)
            assert_well_formed(dropped, request_id)
            assert dropped == whole.events
            assert connections > 1
            stored = (await client.get(f"/assistant/requests/{request_id}/events")).json()
            assert stored["events"] == whole.events

        await asyncio.gather(*(one(n, rid) for n, rid in enumerate(ids)))
