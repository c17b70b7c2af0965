"""Shutdown ends open streams at once instead of waiting for clients to leave."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import BACKENDS
from tests.support.sse_client import read_stream

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
]


async def test_sigterm_closes_open_streams_and_the_request_survives(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="200")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        rid = (await client.post("/assistant/request", json={"prompt": "slow page"})).json()[
            "request_id"
        ]
        await read_stream(client, f"/assistant/stream/{rid}", max_events=4)
        open_stream = asyncio.create_task(read_stream(client, f"/assistant/stream/{rid}"))
        while "genstream_sse_open_streams 1" not in (await client.get("/metrics")).text:
            await asyncio.sleep(0.02)
        code = await asyncio.to_thread(service.terminate, 15.0)
        # uvicorn re-raises the signal it caught once its graceful shutdown is done.
        assert code in (0, -signal.SIGTERM)
        cut = await open_stream
    assert cut.events and cut.events[-1]["type"] not in {"complete", "cancelled"}
    restarted_at = datetime.now(UTC)
    service.start()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        rest = await read_stream(
            client, f"/assistant/stream/{rid}", last_event_id=cut.events[-1]["seq"]
        )
        ending = rest.events[-1]
        # The stopping process ended the generation itself (within its grace period),
        # rather than leaving it to the recovery of the next start.
        assert ending["type"] == "error" and ending["code"] == "interrupted"
        assert datetime.fromisoformat(ending["at"]) < restarted_at
