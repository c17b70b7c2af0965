"""Snapshots on resume, paced replay, regenerate, one-shot generate, edits and rejections."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import BACKENDS
from tests.support.invariants import assert_well_formed
from tests.support.server import ROOT
from tests.support.sse_client import parse_frames, read_stream

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
]


async def generated(client: httpx.AsyncClient, prompt: str, **extra: Any) -> list[dict[str, Any]]:
    response = await client.post("/assistant/request", json={"prompt": prompt, **extra})
    assert response.status_code == 201, response.text
    rid = response.json()["request_id"]
    events = (await read_stream(client, f"/assistant/stream/{rid}")).events
    assert_well_formed(events, rid)
    return events


@pytest.fixture
async def client(service_factory: Any) -> Any:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="2")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c


async def test_snapshot_on_resume_then_the_missed_events(client: httpx.AsyncClient) -> None:
    events = await generated(client, "a page for a glass blower")
    rid = events[0]["request_id"]
    resume_at = next(e["seq"] for e in events if e["type"] == "content_block_stop") + 2
    read = await read_stream(client, f"/assistant/stream/{rid}?snapshot=1", last_event_id=resume_at)
    frames = [f for f in read.frames if f.event is not None]
    assert frames[0].event == "snapshot" and frames[0].id == str(resume_at)
    snapshot = frames[0].json()
    expected = await client.get(f"/assistant/requests/{rid}/page", params={"at": resume_at})
    assert snapshot["page"] == expected.json()
    assert snapshot["seq"] == resume_at and snapshot["type"] == "snapshot"
    assert snapshot["page"]["components"][0]["status"] == "ok"
    assert [f.json() for f in frames[1:]] == events[resume_at:]


async def test_replay_keeps_ids_and_framing(client: httpx.AsyncClient) -> None:
    events = await generated(client, "a page for a potter")
    rid = events[0]["request_id"]
    fast = await read_stream(client, f"/assistant/replay/{rid}?speed=0")
    assert fast.events == events
    assert [f.id for f in fast.frames if f.event] == [str(e["seq"]) for e in events]
    partial = await read_stream(client, f"/assistant/replay/{rid}?speed=0&from=5", first_seq=5)
    assert partial.events[0]["seq"] == 5 and partial.events == events[4:]
    resumed = await read_stream(client, f"/assistant/replay/{rid}?speed=0", last_event_id=7)
    assert resumed.events == events[7:]
    last = events[-1]["seq"]
    assert (
        await client.get(f"/assistant/replay/{rid}", headers={"Last-Event-ID": str(last)})
    ).status_code == 204
    ahead = await client.get(f"/assistant/replay/{rid}", params={"from": last + 2})
    assert ahead.status_code == 409 and ahead.json()["code"] == "from_ahead"
    bad = await client.get(f"/assistant/replay/{rid}", params={"speed": -1})
    assert bad.status_code == 400


async def test_replay_follows_the_original_pacing(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="10")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
        events = await generated(client, "a page for a slow cooker")
        rid = events[0]["request_id"]
        span = (
            datetime.fromisoformat(events[-1]["at"]) - datetime.fromisoformat(events[0]["at"])
        ).total_seconds()
        assert span > 0.5
        started = time.monotonic()
        replayed = await read_stream(client, f"/assistant/replay/{rid}?speed=2")
        elapsed = time.monotonic() - started
        assert replayed.events == events
        # Pacing can only be late, never early: at least the original span / speed.
        assert elapsed >= span / 2 * 0.95, (elapsed, span)


async def test_leaving_a_replay_stops_it(client: httpx.AsyncClient) -> None:
    events = await generated(client, "a page for a clockmaker")
    rid = events[0]["request_id"]
    cut = await read_stream(client, f"/assistant/replay/{rid}?speed=0.05", max_events=2)
    assert cut.events == events[:2]
    deadline = time.monotonic() + 10
    while "genstream_sse_open_streams 0" not in (await client.get("/metrics")).text:
        assert time.monotonic() < deadline, "the replay kept running after the client left"
        await asyncio.sleep(0.05)


async def test_regenerate_links_to_its_parent(client: httpx.AsyncClient) -> None:
    events = await generated(client, "a page for a beekeeper", track_id="site-1")
    rid = events[0]["request_id"]
    again = await client.post(f"/assistant/requests/{rid}/regenerate")
    assert again.status_code == 201
    child = again.json()["request_id"]
    child_events = (await read_stream(client, f"/assistant/stream/{child}")).events
    assert_well_formed(child_events, child)
    created = child_events[0]
    assert created["prompt"] == "a page for a beekeeper" and created["track_id"] == "site-1"
    assert created["parent_request_id"] == rid
    # The demo model is deterministic: the same inputs give the same page.
    assert child_events[-1]["content"] == events[-1]["content"]
    status = (await client.get(f"/assistant/requests/{child}")).json()
    assert status["parent_request_id"] == rid
    changed = await client.post(
        f"/assistant/requests/{rid}/regenerate", json={"prompt": "a page for a baker"}
    )
    changed_id = changed.json()["request_id"]
    changed_events = (await read_stream(client, f"/assistant/stream/{changed_id}")).events
    assert changed_events[0]["prompt"] == "a page for a baker"
    assert changed_events[-1]["content"] != events[-1]["content"]
    unknown = "01900000-0000-7000-8000-000000000000"
    assert (await client.post(f"/assistant/requests/{unknown}/regenerate")).status_code == 404
    bad = await client.post(f"/assistant/requests/{rid}/regenerate", json={"model": "a b"})
    assert bad.status_code == 400


async def test_one_shot_generate_streams_or_waits(client: httpx.AsyncClient) -> None:
    body = {"prompt": "a page for a cheesemaker"}
    async with client.stream(
        "POST", "/assistant/generate", json=body, headers={"Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        location = response.headers["location"]
        lines = [line async for line in response.aiter_lines()]
    events = [f.json() for f in parse_frames(lines) if f.event]
    rid = events[0]["request_id"]
    assert location == f"/assistant/requests/{rid}"
    assert_well_formed(events, rid)
    resumed = await read_stream(client, f"/assistant/stream/{rid}", last_event_id=3)
    assert resumed.events == events[3:]

    waited = await client.post("/assistant/generate", json={"prompt": "a chat", "mode": "chat"})
    assert waited.status_code == 200
    status = waited.json()
    assert status["status"] == "completed" and status["result"]["type"] == "complete"
    assert status["result"]["content"]


async def test_edit_requests_project_the_edited_page(client: httpx.AsyncClient) -> None:
    events = await generated(client, "a page for a luthier")
    rid = events[0]["request_id"]
    page = (await client.get(f"/assistant/requests/{rid}/page")).json()
    edit = await generated(client, "make the hero bolder", mode="edit", context={"page": page})
    action = next(e for e in edit if e["type"] == "action")
    assert action["action"] == "update_component" and action["index"] == 0
    edited = (await client.get(f"/assistant/requests/{edit[0]['request_id']}/page")).json()
    assert [c["name"] for c in edited["components"]] == [c["name"] for c in page["components"]]
    hero = edited["components"][0]
    assert hero["content"] == action["content"] != page["components"][0]["content"]
    assert edited["components"][1:] == page["components"][1:]


async def test_the_unsafe_demo_prompt_shows_a_rejected_component(
    client: httpx.AsyncClient,
) -> None:
    events = await generated(client, "an unsafe demo page")
    rejected = [e for e in events if e["type"] == "content_block_stop" and e["status"] != "ok"]
    assert len(rejected) == 1 and "script injection" in rejected[0]["reason"]
    page = (await client.get(f"/assistant/requests/{events[0]['request_id']}/page")).json()
    widget = next(c for c in page["components"] if c["name"] == "EmbedWidget")
    assert widget["status"] == "rejected" and "<script" not in widget["content"]
    # Regression: the terminal event's content used to carry the rejected source.
    assert "<script" not in events[-1]["content"]
    assert "/// START EmbedWidget" in events[-1]["content"]
    grid = next(c for c in page["components"] if c["name"] == "FeatureGrid")
    assert [c["name"] for c in grid["children"]] == ["FeatureCard"] * 3


async def test_cli_replay_prints_every_event_with_progress(client: httpx.AsyncClient) -> None:
    events = await generated(client, "a page for a ferry line")
    rid = events[0]["request_id"]
    service = client.service  # type: ignore[attr-defined]
    env = {**os.environ, "GENSTREAM_DATABASE_URL": service.database_url}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "replay", rid, "--speed", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(events)
    total = events[-1]["seq"]
    assert lines[0].startswith("[") and f" 1/{total}  created" in lines[0]
    assert lines[-1].startswith("[" + "#" * 24 + "]") and "complete" in lines[-1]
    past = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "replay", rid, "--from", str(total + 1)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert past.returncode == 1 and "past the last event" in past.stderr
