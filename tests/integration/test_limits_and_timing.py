"""Limits under concurrency, heartbeats, idle close, generation timeout and coalescing."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BACKENDS
from tests.support.invariants import assert_well_formed
from tests.support.server import ServiceProcess
from tests.support.sse_client import read_stream

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
]


async def test_concurrent_posts_cannot_exceed_the_active_limit(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_MAX_ACTIVE_PER_USER="5", GENSTREAM_DEMO_TOKEN_DELAY_MS="50")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post("/assistant/request", json={"prompt": f"p{n}"}) for n in range(20))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 5 + [429] * 15


async def test_concurrent_field_jobs_for_one_element_share_one_request(
    service_factory: Any,
) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="50")
    body = {
        "prompt": "a title",
        "mode": "field",
        "context": {"element_id": "Hero-3_custom_title", "field": "title"},
    }
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post("/assistant/request", json=body) for _ in range(6))
        )
        assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
        assert len({r.json()["request_id"] for r in responses}) == 1
        assert {r.json()["status"] for r in responses if r.status_code == 200} == {
            "already_processing"
        }


async def test_idle_streams_get_pings_and_are_closed_after_the_idle_timeout(
    service_factory: Any,
) -> None:
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="5000",
        GENSTREAM_SSE_PING_INTERVAL_S="0.2",
        GENSTREAM_STREAM_IDLE_TIMEOUT_S="1",
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        rid = (await client.post("/assistant/request", json={"prompt": "slow"})).json()[
            "request_id"
        ]
        read = await read_stream(client, f"/assistant/stream/{rid}")
        assert read.status == 200
        assert any(f.comment and f.data == "ping" for f in read.frames)
        # Closed for idleness, not for the end: the client resumes from its last id.
        assert read.events[-1]["type"] not in {"complete", "error", "cancelled"}
        again = await read_stream(
            client, f"/assistant/stream/{rid}", last_event_id=read.events[-1]["seq"]
        )
        assert again.status == 200
        await client.post(f"/assistant/requests/{rid}/cancel")


async def test_a_generation_past_its_timeout_ends_in_error_timeout(service_factory: Any) -> None:
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="100", GENSTREAM_GENERATION_TIMEOUT_S="0.5"
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        rid = (await client.post("/assistant/request", json={"prompt": "too long"})).json()[
            "request_id"
        ]
        events = (await read_stream(client, f"/assistant/stream/{rid}")).events
    assert_well_formed(events, rid)
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "timeout" and events[-1]["retryable"] is True


async def test_a_fast_model_is_coalesced_into_few_events(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="0", GENSTREAM_FLUSH_MAX_CHARS="4096")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        rid = (await client.post("/assistant/request", json={"prompt": "quick"})).json()[
            "request_id"
        ]
        events = (await read_stream(client, f"/assistant/stream/{rid}")).events
    assert_well_formed(events, rid)
    tokens = events[-1]["usage"]["completion_tokens"]
    deltas = [e for e in events if e["type"] in {"response_chunk", "content_block_delta"}]
    assert tokens > 50
    assert len(deltas) * 5 < tokens, f"{len(deltas)} delta events for {tokens} tokens"
    assert "".join(e.get("delta", "") for e in deltas if e["type"] == "response_chunk")


async def test_deep_json_and_deep_context_are_400(service_factory: Any) -> None:
    service = service_factory()
    deep = '{"prompt":"a","context":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}"
    nested = '{"prompt":"a","context":' + '{"a":' * 40 + "1" + "}" * 40 + "}"
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        headers = {"content-type": "application/json"}
        for body, code in [(deep, "json_too_deep"), (nested, "context_too_deep")]:
            response = await client.post("/assistant/request", content=body, headers=headers)
            assert response.status_code == 400, response.text
            assert response.json()["code"] == code


def test_the_service_refuses_to_start_on_an_unmigrated_database(
    tmp_path: Path, empty_database_url: str | None
) -> None:
    service = ServiceProcess(tmp_path / "empty.db", migrated=False, database_url=empty_database_url)
    try:
        with pytest.raises(RuntimeError, match="exited at start"):
            service.start(timeout_s=20)
    finally:
        service.stop()
    assert "run `alembic upgrade head`" in service.log()


async def test_a_saturated_service_sheds_new_requests_and_keeps_its_streams(
    service_factory: Any,
) -> None:
    service = service_factory(GENSTREAM_SHED_LAG_MS="20", GENSTREAM_DEMO_TOKEN_DELAY_MS="20")
    assert service.proc is not None
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        running = (await client.post("/assistant/request", json={"prompt": "keep me"})).json()
        # Freeze the whole process: when it runs again, its event loop is 300 ms behind,
        # as a saturated one is.
        os.kill(service.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.3)
        finally:
            os.kill(service.proc.pid, signal.SIGCONT)
        for _ in range(100):
            if "genstream_saturated 1" in (await client.get("/metrics")).text.splitlines():
                break
        else:
            raise AssertionError("the service never noticed its loop ran late")
        refused = await client.post("/assistant/request", json={"prompt": "late"})
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["type"].endswith("/overloaded")
        # Refused at the edge, before the body is even read: the one-shot endpoint too.
        refused = await client.post("/assistant/generate", content=b"not even JSON")
        assert refused.status_code == 429
        # What it already accepted goes on to its end.
        read = await read_stream(client, f"/assistant/stream/{running['request_id']}")
        assert_well_formed(read.events)
        assert read.events[-1]["type"] == "complete"
        # Once the loop keeps time again, it admits new work.
        shed = 2
        for _ in range(100):
            again = await client.post("/assistant/request", json={"prompt": "later"})
            if again.status_code != 429:
                break
            assert again.json()["code"] == "overloaded"
            shed += 1
            await asyncio.sleep(0.05)
        assert again.status_code == 201
        metrics = (await client.get("/metrics")).text.splitlines()
        assert f"genstream_shed_total {shed}" in metrics
