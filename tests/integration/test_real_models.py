"""The service on the openai provider, against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.openai_server import (
    Completion,
    Failure,
    FakeOpenAIServer,
    ScriptedToolCall,
    fake_openai_server,
)
from tests.support.invariants import assert_well_formed
from tests.support.sse_client import read_stream

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ELEMENT = "HeroSection-7_custom_title"


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with fake_openai_server() as server:
        yield server


@pytest.fixture
async def client(service_factory: Any, fake: FakeOpenAIServer) -> Any:
    service = service_factory(
        GENSTREAM_PROVIDER="openai",
        GENSTREAM_MODEL="llama-test",
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="test-key",
        GENSTREAM_OPENAI_RETRY_BACKOFF_S="0.01",
        GENSTREAM_OPENAI_READ_TIMEOUT_S="2",
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        yield c


async def run(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/assistant/request", json=body)
    assert response.status_code == 201, response.text
    rid = response.json()["request_id"]
    events = (await read_stream(client, f"/assistant/stream/{rid}")).events
    assert_well_formed(events, rid)
    return events


def field_body(value_prompt: str, field: str = "title", **context: Any) -> dict[str, Any]:
    return {
        "prompt": value_prompt,
        "mode": "field",
        "track_id": "site-9",
        "context": {
            "element_id": ELEMENT,
            "field": field,
            "business_description": "A family bakery in Porto",
            **context,
        },
    }


async def test_generate_streams_components_from_the_model(
    client: httpx.AsyncClient, fake: FakeOpenAIServer
) -> None:
    page = (
        "Here you go.\n/// START HeroSection position=0\n<h1>Porto Bakes</h1>\n"
        "/// END HeroSection\n/// START ContactFooter position=1\n<footer>hi</footer>\n"
        "/// END ContactFooter\n"
    )
    fake.script(Completion(tokens=[page[i : i + 7] for i in range(0, len(page), 7)]))
    events = await run(client, {"prompt": "a bakery page"})
    complete = events[-1]
    assert complete["type"] == "complete" and complete["model"] == "llama-test"
    assert [c["name"] for c in complete["components"]] == ["HeroSection", "ContactFooter"]
    assert complete["usage"]["prompt_tokens"] == 12
    (request,) = fake.requests
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.body["model"] == "llama-test"
    assert request.body["stream_options"] == {"include_usage": True}
    assert "/// START" in request.body["messages"][0]["content"]


async def test_field_value_uses_the_requests_element_never_the_models(
    client: httpx.AsyncClient, fake: FakeOpenAIServer
) -> None:
    wrong = json.dumps({"elementid": "Evil-1_custom_x", "output": "Fresh bread, every dawn"})
    fake.script(Completion(tool_calls=[ScriptedToolCall("deliver_website_content", wrong, 4)]))
    events = await run(client, field_body("a warm title", field_type="heading"))
    action = next(e for e in events if e["type"] == "action")
    assert action == {**action, "action": "set_field", "element_id": ELEMENT, "field": "title"}
    assert action["value"] == "Fresh bread, every dawn"
    assert events[-1]["output"] == "Fresh bread, every dawn"
    body = fake.requests[0].body
    assert body["tool_choice"]["function"]["name"] == "deliver_website_content"
    assert ELEMENT in json.dumps(body["messages"])


async def test_a_plain_answer_still_yields_the_field_value(
    client: httpx.AsyncClient, fake: FakeOpenAIServer
) -> None:
    fake.script(Completion(tokens=["Warm ", "loaves ", "daily"]))
    events = await run(client, field_body("a subtitle", field="subtitle"))
    action = next(e for e in events if e["type"] == "action")
    assert (action["element_id"], action["value"]) == (ELEMENT, "Warm loaves daily")


async def test_edit_tool_calls_become_actions_and_the_edited_page(
    client: httpx.AsyncClient, fake: FakeOpenAIServer
) -> None:
    page = {
        "components": [
            {"index": 0, "name": "HeroSection", "position": "0", "content": "<h1>Old</h1>\n"},
            {"index": 1, "name": "Footer", "position": "1", "content": "<footer/>\n"},
        ],
        "text": "",
    }
    update = json.dumps({"index": 0, "name": "HeroSection", "content": "<h1>New</h1>\n"})
    remove = json.dumps({"index": 1})
    fake.script(
        Completion(
            tool_calls=[
                ScriptedToolCall("update_component", update, 3),
                ScriptedToolCall("remove_component", remove, 2),
            ]
        )
    )
    events = await run(client, {"prompt": "new title", "mode": "edit", "context": {"page": page}})
    assert [e["action"] for e in events if e["type"] == "action"] == [
        "update_component",
        "remove_component",
    ]
    rid = events[0]["request_id"]
    edited = (await client.get(f"/assistant/requests/{rid}/page")).json()
    assert [(c["name"], c["content"]) for c in edited["components"]] == [
        ("HeroSection", "<h1>New</h1>\n")
    ]


async def test_an_unsafe_edit_is_refused(client: httpx.AsyncClient, fake: FakeOpenAIServer) -> None:
    update = json.dumps({"index": 0, "content": "<img src=x onerror='steal()'>"})
    fake.script(Completion(tool_calls=[ScriptedToolCall("update_component", update, 2)]))
    events = await run(client, {"prompt": "x", "mode": "edit", "context": {"page": {}}})
    assert events[-1]["type"] == "error" and events[-1]["code"] == "unsafe_output"
    assert not [e for e in events if e["type"] == "action"]


async def test_an_edit_call_without_its_arguments_is_malformed(
    client: httpx.AsyncClient, fake: FakeOpenAIServer
) -> None:
    fake.script(Completion(tool_calls=[ScriptedToolCall("update_component", "{}", 1)]))
    events = await run(client, {"prompt": "x", "mode": "edit", "context": {"page": {}}})
    assert events[-1]["code"] == "malformed_tool_arguments"
    assert "index" in events[-1]["message"]


async def test_provider_failures_end_in_a_clear_error(
    client: httpx.AsyncClient, fake: FakeOpenAIServer
) -> None:
    fake.script(Failure(500), Failure(500), Failure(500))
    events = await run(client, {"prompt": "hi", "mode": "chat"})
    ending = events[-1]
    assert ending["type"] == "error" and ending["code"] == "provider_error"
    assert ending["retryable"] is True
    assert len(fake.requests) == 3  # two retries before any token, then the error

    fake.script(Completion(tokens=["partial ", "answer"], drop_after=2))
    events = await run(client, {"prompt": "hi again", "mode": "chat"})
    assert events[-1]["code"] == "provider_error"
    text = "".join(e["delta"] for e in events if e["type"] == "response_chunk")
    assert text == "partial ", "no retry after the first token: nothing is duplicated"


async def test_track_content_has_the_latest_value_per_field(
    client: httpx.AsyncClient, fake: FakeOpenAIServer
) -> None:
    def value(text: str) -> Completion:
        args = json.dumps({"elementid": ELEMENT, "output": text})
        return Completion(tool_calls=[ScriptedToolCall("deliver_website_content", args, 2)])

    fake.script(value("First title"), value("A subtitle"), value("Second title"))
    first = await run(client, field_body("t", field_type="heading"))
    await run(client, field_body("s", field="subtitle"))
    second = await run(client, field_body("t again", field_type="heading"))
    content = (await client.get("/tracks/site-9/content")).json()
    assert content["track_id"] == "site-9"
    fields = {(f["element_id"], f["field"]): f for f in content["fields"]}
    assert set(fields) == {(ELEMENT, "subtitle"), (ELEMENT, "title")}
    title = fields[(ELEMENT, "title")]
    assert title["value"] == "Second title" and title["field_type"] == "heading"
    assert title["request_id"] == second[0]["request_id"] != first[0]["request_id"]
    assert fields[(ELEMENT, "subtitle")]["field_type"] is None
    assert (await client.get("/tracks/nothing-here/content")).json()["fields"] == []
    assert (await client.get("/tracks/bad track/content")).status_code == 400
