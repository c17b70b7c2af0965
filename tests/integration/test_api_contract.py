"""Every status code of the request lifecycle and the stream, against a real server."""

from __future__ import annotations

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

UNKNOWN_ID = "01900000-0000-7000-8000-000000000000"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["type"]
    return body


@pytest.fixture
async def client(service_factory: Any) -> Any:
    service = service_factory(GENSTREAM_MAX_BODY_BYTES="20000", GENSTREAM_MAX_PROMPT_CHARS="5000")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        yield c


async def finish(client: httpx.AsyncClient, request_id: str) -> list[dict[str, Any]]:
    read = await read_stream(client, f"/assistant/stream/{request_id}")
    assert read.status == 200
    assert_well_formed(read.events, request_id)
    return read.events


async def test_created_with_location_and_stream_url(client: httpx.AsyncClient) -> None:
    response = await client.post("/assistant/request", json={"prompt": "a page for a florist"})
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == f"/assistant/requests/{body['request_id']}"
    assert body["stream_url"] == f"/assistant/stream/{body['request_id']}"
    events = await finish(client, body["request_id"])
    assert [e["type"] for e in events[:4]] == ["created", "status", "status", "stage"]
    assert events[0]["prompt"] == "a page for a florist" and events[0]["mode"] == "generate"
    complete = events[-1]
    assert complete["type"] == "complete"
    assert 3 <= len([c for c in complete["components"] if c["parent"] is None]) <= 6


async def test_stream_framing_and_headers(client: httpx.AsyncClient) -> None:
    rid = (await client.post("/assistant/request", json={"prompt": "x y z"})).json()["request_id"]
    read = await read_stream(client, f"/assistant/stream/{rid}")
    assert read.headers["content-type"].startswith("text/event-stream")
    assert read.headers["cache-control"] == "no-cache"
    assert read.headers["x-accel-buffering"] == "no"
    assert read.frames[0].retry is not None and read.frames[0].event is None
    for frame in read.frames[1:]:
        data = frame.json()
        assert frame.id == str(data["seq"]) and frame.event == data["type"]
        assert {"request_id", "seq", "type", "at"} <= data.keys()


async def test_idempotency_key_returns_the_same_request(client: httpx.AsyncClient) -> None:
    body = {"prompt": "a page for a cafe", "mode": "chat"}
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/assistant/request", json=body, headers=headers)
    again = await client.post("/assistant/request", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["request_id"] == first.json()["request_id"]
    other = await client.post("/assistant/request", json=body, headers={"Idempotency-Key": "x2"})
    assert other.json()["request_id"] != first.json()["request_id"]
    await finish(client, first.json()["request_id"])


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b'{"prompt": ', "bad_request"),
        (b"[]", "invalid_parameter"),
        (b'{"prompt": 42}', "invalid_parameter"),
        (b'{"prompt": "hi", "mode": "poem"}', "invalid_parameter"),
        (b'{"prompt": "   "}', "empty_prompt"),
        (b'{"prompt": "' + b"x" * 5001 + b'"}', "prompt_too_long"),
        (b'{"prompt": "hi", "context": [1, 2]}', "invalid_parameter"),
        (b'{"prompt": "hi", "context": "text"}', "invalid_parameter"),
        (b'{"prompt": "hi", "surprise": 1}', "invalid_parameter"),
        (b'{"prompt": "hi", "track_id": "no spaces allowed"}', "invalid_track_id"),
        (b'{"prompt": "hi", "mode": "field", "context": {"field": "t"}}', "invalid_element_id"),
    ],
)
async def test_bad_bodies_get_problem_details(
    client: httpx.AsyncClient, content: bytes, code: str
) -> None:
    response = await client.post(
        "/assistant/request", content=content, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, code)
    assert (await client.get("/health")).status_code == 200


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/assistant/request", json={"prompt": "hi", "context": {"blob": "x" * 30_000}}
    )
    assert_problem(response, 413, "body_too_large")
    ok = await client.post("/assistant/request", json={"prompt": "still serving"})
    assert ok.status_code == 201
    await finish(client, ok.json()["request_id"])


async def test_malformed_and_unknown_request_ids(client: httpx.AsyncClient) -> None:
    for path in [
        "/assistant/stream/{}",
        "/assistant/requests/{}",
        "/assistant/requests/{}/page",
        "/assistant/requests/{}/events",
    ]:
        assert_problem(await client.get(path.format("not-a-uuid")), 400, "malformed_request_id")
        uuid4 = "9b2f1c7e-8a34-4c1e-9d2a-3f5e6a7b8c9d"
        assert_problem(await client.get(path.format(uuid4)), 400, "malformed_request_id")
        assert_problem(await client.get(path.format(UNKNOWN_ID)), 404, "request_not_found")
    assert_problem(
        await client.post(f"/assistant/requests/{UNKNOWN_ID}/cancel"), 404, "request_not_found"
    )


async def test_last_event_id_rules(client: httpx.AsyncClient) -> None:
    rid = (await client.post("/assistant/request", json={"prompt": "a"})).json()["request_id"]
    events = await finish(client, rid)
    last = events[-1]["seq"]
    path = f"/assistant/stream/{rid}"
    # Already seen the terminal event: 204 stops EventSource from reconnecting.
    assert (await client.get(path, headers={"Last-Event-ID": str(last)})).status_code == 204
    assert (await client.get(path, params={"last_event_id": str(last)})).status_code == 204
    assert_problem(
        await client.get(path, headers={"Last-Event-ID": str(last + 1)}),
        409,
        "last_event_id_ahead",
    )
    for bad in ["abc", "-1", "1.5", "9" * 30]:
        assert_problem(
            await client.get(path, headers={"Last-Event-ID": bad}), 400, "malformed_last_event_id"
        )
    # Resuming in the middle sends exactly the rest, via the header or the query.
    for use_query in (False, True):
        rest = await read_stream(client, path, last_event_id=5, use_query=use_query)
        assert rest.events == events[5:]


async def test_events_page_and_status(client: httpx.AsyncClient) -> None:
    rid = (await client.post("/assistant/request", json={"prompt": "bakery"})).json()["request_id"]
    events = await finish(client, rid)
    page = await client.get(f"/assistant/requests/{rid}/events", params={"after": 2, "limit": 3})
    assert page.status_code == 200
    assert page.json()["events"] == events[2:5]
    assert_problem(
        await client.get(f"/assistant/requests/{rid}/events", params={"limit": 0}),
        400,
        "invalid_parameter",
    )
    status = (await client.get(f"/assistant/requests/{rid}")).json()
    assert status["status"] == "completed" and status["last_seq"] == events[-1]["seq"]
    assert status["result"] == events[-1]
    full = (await client.get(f"/assistant/requests/{rid}/page")).json()
    assert full["at_seq"] == events[-1]["seq"]
    top_level = [c["name"] for c in events[-1]["components"] if c["parent"] is None]
    assert [c["name"] for c in full["components"]] == top_level
    assert all(c["status"] == "ok" and c["content"] for c in full["components"])
    first_start = next(e["seq"] for e in events if e["type"] == "content_block_start")
    early = (await client.get(f"/assistant/requests/{rid}/page", params={"at": first_start})).json()
    assert early["at_seq"] == first_start
    assert len(early["components"]) == 1 and early["components"][0]["status"] == "streaming"


async def test_cancel_is_idempotent_and_409_after_completion(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="50")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        rid = (await client.post("/assistant/request", json={"prompt": "long"})).json()[
            "request_id"
        ]
        await read_stream(client, f"/assistant/stream/{rid}", max_events=5)
        first = await client.post(f"/assistant/requests/{rid}/cancel")
        assert first.status_code == 200 and first.json()["status"] == "cancelled"
        again = await client.post(f"/assistant/requests/{rid}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        events = (await read_stream(client, f"/assistant/stream/{rid}")).events
        assert_well_formed(events, rid)
        assert events[-2]["type"] == "cancel_requested" or any(
            e["type"] == "cancel_requested" for e in events
        )
        assert events[-1]["type"] == "cancelled"

        done = await client.post("/assistant/request", json={"prompt": "s", "mode": "chat"})
        done_id = done.json()["request_id"]
        # A queued request can be cancelled before any runner takes it, too.
        await read_stream(client, f"/assistant/stream/{done_id}")
        assert_problem(
            await client.post(f"/assistant/requests/{done_id}/cancel"), 409, "already_finished"
        )


async def test_a_disconnect_never_cancels_the_generation(client: httpx.AsyncClient) -> None:
    rid = (await client.post("/assistant/request", json={"prompt": "q"})).json()["request_id"]
    await read_stream(client, f"/assistant/stream/{rid}", max_events=3)
    events = await finish(client, rid)
    assert events[-1]["type"] == "complete"


async def test_too_many_active_requests_is_429(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_MAX_ACTIVE_PER_USER="2", GENSTREAM_DEMO_TOKEN_DELAY_MS="50")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ids = [
            (await client.post("/assistant/request", json={"prompt": f"p{n}"})).json()["request_id"]
            for n in range(2)
        ]
        refused = await client.post("/assistant/request", json={"prompt": "third"})
        body = assert_problem(refused, 429, "too_many_active_requests")
        assert int(refused.headers["retry-after"]) > 0 and "2" in body["detail"]
        for rid in ids:
            await client.post(f"/assistant/requests/{rid}/cancel")
        assert (await client.post("/assistant/request", json={"prompt": "ok"})).status_code == 201


async def test_field_mode_sets_the_requested_element(client: httpx.AsyncClient) -> None:
    context = {
        "element_id": "HeroSection-7_custom_title",
        "field": "title",
        "business_description": "A family bakery in Porto",
    }
    response = await client.post(
        "/assistant/request", json={"prompt": "a warm title", "mode": "field", "context": context}
    )
    assert response.status_code == 201
    rid = response.json()["request_id"]
    again = await client.post(
        "/assistant/request", json={"prompt": "another", "mode": "field", "context": context}
    )
    if again.status_code == 200:  # still active: the same job, not a second one
        assert again.json() == {**response.json(), "status": "already_processing"}
    events = await finish(client, rid)
    action = next(e for e in events if e["type"] == "action")
    assert action["action"] == "set_field"
    assert action["element_id"] == context["element_id"] and action["field"] == "title"
    assert events[-1]["output"] == action["value"] and action["value"]


async def test_health_ready_metrics_and_schema(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["status"] == "ok"
    ready = (await client.get("/ready")).json()
    assert ready["checks"] == {"database": "ok", "migrations": "ok"}
    metrics = (await client.get("/metrics")).text
    assert "genstream_log_commits_total" in metrics
    schema = (await client.get("/schema/openapi.json")).json()
    for path in [
        "/assistant/request",
        "/assistant/stream/{request_id}",
        "/assistant/requests/{request_id}/cancel",
        "/assistant/requests/{request_id}/page",
    ]:
        assert path in schema["paths"]
    responses = schema["paths"]["/assistant/request"]["post"]["responses"]
    assert {"201", "429", "503"} <= set(responses), "the log's 503 is in the contract"
    assert_problem(await client.get("/nowhere"), 404, "not_found")


async def test_cancel_racing_the_runner_start_still_ends_the_request(
    service_factory: Any,
) -> None:
    """Regression: a runner task cancelled before it first ran wrote no terminal event,
    leaving the request queued forever and counted against the active limit."""
    service = service_factory(GENSTREAM_MAX_ACTIVE_PER_USER="3", GENSTREAM_RUNNERS="4")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        for n in range(30):
            created = await client.post("/assistant/request", json={"prompt": f"race {n}"})
            assert created.status_code == 201, created.text
            rid = created.json()["request_id"]
            cancel = await client.post(f"/assistant/requests/{rid}/cancel")
            events = (await read_stream(client, f"/assistant/stream/{rid}")).events
            assert_well_formed(events, rid)
            if cancel.status_code == 200:
                assert events[-1]["type"] == "cancelled"
            else:  # the demo model can finish first
                assert_problem(cancel, 409, "already_finished")
                assert events[-1]["type"] == "complete"
