"""A SIGKILL mid-generation loses nothing committed and ends the request as interrupted."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import BACKENDS
from tests.support.invariants import assert_well_formed
from tests.support.sse_client import read_stream

SHORT_LEASE = {"GENSTREAM_LEASE_S": "2", "GENSTREAM_LEASE_RENEW_S": "0.5"}

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
]


async def test_sigkill_mid_generation_then_resume_on_the_same_file(service_factory: Any) -> None:
    # A short lease: on PostgreSQL the restarted node ends only requests whose lease
    # expired (other nodes may still be running theirs).
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="40", **SHORT_LEASE)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        created = await client.post(
            "/assistant/request", json={"prompt": "a page for a mountain guide in Chamonix"}
        )
        request_id = created.json()["request_id"]
        before = await read_stream(client, f"/assistant/stream/{request_id}", max_events=8)
    seen = before.events
    assert len(seen) == 8 and seen[-1]["type"] not in {"complete", "error", "cancelled"}

    service.kill()
    service.start()

    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        after = await read_stream(
            client, f"/assistant/stream/{request_id}", last_event_id=seen[-1]["seq"]
        )
        assert after.status == 200
        assert after.events[0]["seq"] == seen[-1]["seq"] + 1
        ending = after.events[-1]
        assert ending["type"] == "error"
        assert ending["code"] == "interrupted" and ending["retryable"] is True
        assert_well_formed(seen + after.events, request_id)

        stored = (await client.get(f"/assistant/requests/{request_id}/events")).json()["events"]
        assert stored[: len(seen)] == seen, "events sent before the kill changed"
        assert stored == seen + after.events
        status = (await client.get(f"/assistant/requests/{request_id}")).json()
        assert status["status"] == "failed"
        assert status["result"]["code"] == "interrupted"


async def test_requests_queued_at_a_crash_run_after_restart(service_factory: Any) -> None:
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="40", GENSTREAM_RUNNERS="1", **SHORT_LEASE
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        first = (await client.post("/assistant/request", json={"prompt": "one"})).json()
        second = (await client.post("/assistant/request", json={"prompt": "two"})).json()
        # With one runner, the second waits in the queue while the first runs.
        await read_stream(client, f"/assistant/stream/{first['request_id']}", max_events=5)
        queued = (await client.get(f"/assistant/requests/{second['request_id']}")).json()
        assert queued["status"] == "queued"
    service.kill()
    service.start()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        done = await read_stream(client, f"/assistant/stream/{second['request_id']}")
        assert_well_formed(done.events, second["request_id"])
        assert done.events[-1]["type"] == "complete"
        interrupted = await read_stream(client, f"/assistant/stream/{first['request_id']}")
        assert interrupted.events[-1]["code"] == "interrupted"
