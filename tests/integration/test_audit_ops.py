"""Audit queries, NDJSON export, the operator CLI, metrics and structured logs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.api.auth import mint_token
from tests.conftest import BACKENDS
from tests.support.database import execute
from tests.support.server import ROOT, ServiceProcess
from tests.support.sse_client import read_stream

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
]

SECRET = "audit-secret-of-forty-characters-01234567"


def auth(user: str, admin: bool = False) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {mint_token(SECRET, user, ttl=timedelta(minutes=5), admin=admin)}"
    }


async def cli(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GENSTREAM_DATABASE_URL": service.database_url}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
async def populated(service_factory: Any) -> Any:
    service = service_factory(GENSTREAM_JWT_SECRET=SECRET, GENSTREAM_LOG_LEVEL="info")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ids: dict[str, list[str]] = {"alice": [], "bob": []}
        for user, mode in [("alice", "generate"), ("alice", "chat"), ("bob", "chat")]:
            created = await client.post(
                "/assistant/request",
                json={"prompt": f"{user} {mode}", "mode": mode, "track_id": "t1"},
                headers=auth(user),
            )
            ids[user].append(created.json()["request_id"])
            await read_stream(client, created.json()["stream_url"])
        cancelled = await client.post(
            "/assistant/request", json={"prompt": "x"}, headers=auth("bob")
        )
        rid = cancelled.json()["request_id"]
        await client.post(f"/assistant/requests/{rid}/cancel", headers=auth("bob"))
        ids["bob"].append(rid)
        yield service, client, ids


async def test_users_audit_their_own_history_admins_everyones(populated: Any) -> None:
    _, client, ids = populated
    mine = (
        await client.get("/audit/events", headers=auth("alice"), params={"user_id": "bob"})
    ).json()
    assert {e["user_id"] for e in mine["events"]} == {"alice"}
    assert {e["request_id"] for e in mine["events"]} == set(ids["alice"])
    everyone = (await client.get("/audit/events", headers=auth("root", admin=True))).json()
    assert {e["user_id"] for e in everyone["events"]} == {"alice", "bob"}
    ids_in_order = [e["id"] for e in everyone["events"]]
    assert ids_in_order == sorted(ids_in_order)
    only_bob = await client.get(
        "/audit/events",
        headers=auth("root", admin=True),
        params={"user_id": "bob", "type": "created"},
    )
    assert [e["request_id"] for e in only_bob.json()["events"]] == ids["bob"]
    naive = await client.get(
        "/audit/events", headers=auth("alice"), params={"since": "2000-01-01T00:00:00"}
    )
    assert naive.status_code == 200 and naive.json()["events"], "no offset means UTC"
    bad = await client.get("/audit/events", headers=auth("alice"), params={"type": "nope"})
    assert bad.status_code == 400 and bad.json()["code"] == "unknown_event_type"


async def test_event_pages_and_ndjson_export_agree(populated: Any) -> None:
    _, client, _ = populated
    admin = auth("root", admin=True)
    paged: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (
            await client.get("/audit/events", headers=admin, params={"after_id": after, "limit": 7})
        ).json()
        paged += page["events"]
        if page["next_after_id"] is None:
            break
        after = page["next_after_id"]
    ndjson = await client.get("/audit/events", headers={**admin, "Accept": "application/x-ndjson"})
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in ndjson.text.splitlines()] == paged
    per_request = (await client.get("/audit/stats", headers=admin)).json()["events_per_request"]
    assert paged and len(paged) == round(per_request["mean"] * per_request["count"])


async def test_request_audit_and_stats(populated: Any) -> None:
    _, client, ids = populated
    admin = auth("root", admin=True)
    chats = (await client.get("/audit/requests", headers=admin, params={"mode": "chat"})).json()
    assert {r["user_id"] for r in chats["requests"]} == {"alice", "bob"}
    first = (await client.get("/audit/requests", headers=admin, params={"limit": 2})).json()
    rest = (
        await client.get("/audit/requests", headers=admin, params={"after": first["next_after"]})
    ).json()
    assert [r["request_id"] for r in first["requests"] + rest["requests"]] == ids["alice"] + ids[
        "bob"
    ]
    stats = (await client.get("/audit/stats", headers=admin)).json()
    assert stats["requests"] == 4
    assert stats["by_status"] == {"completed": 3, "cancelled": 1}
    assert stats["by_mode"] == {"generate": 2, "chat": 2}
    assert stats["duration_ms"]["count"] == 4 and stats["duration_ms"]["p50"] > 0
    assert stats["time_to_first_chunk_ms"]["count"] >= 3
    assert stats["tokens"]["total"] > 0 and stats["tokens"]["per_request"]["count"] == 3
    bobs = (await client.get("/audit/stats", headers=auth("bob"))).json()
    assert bobs["requests"] == 2 and bobs["by_status"] == {"completed": 1, "cancelled": 1}


async def test_metrics_and_logs(populated: Any) -> None:
    service, client, ids = populated
    text = (await client.get("/metrics", headers=auth("root", admin=True))).text
    for needle in [
        'genstream_generations_total{ending="complete"} 3',
        'genstream_log_events_by_type_total{type="created"} 4',
        'genstream_log_batch_size_bucket{le="+Inf"}',
        "genstream_sse_connections_total",
        "genstream_queue_depth 0",
    ]:
        assert needle in text, needle
    # Every generation a runner started has a duration: the three that completed, and the
    # cancelled one if a runner had taken it before the cancel.
    endings = re.findall(r"^genstream_generations_total\{[^}]*\} (\d+)$", text, re.M)
    assert f"genstream_generation_duration_seconds_count {sum(map(int, endings))}\n" in text
    # Each group commit's transaction is timed; its write delay (queue wait, transaction,
    # publication) is at least as long.
    (commits,) = re.findall(r"^genstream_log_commits_total (\d+)$", text, re.M)
    assert f"genstream_log_transaction_seconds_count {commits}\n" in text
    sums = {
        name: float(value)
        for name, value in re.findall(r"^genstream_log_(\w+)_seconds_sum (\S+)$", text, re.M)
    }
    assert 0 < sums["transaction"] <= sums["write_delay"]
    log = service.log()
    for rid in ids["alice"]:
        assert f"request_id={rid}" in log and "generation started" in log
    assert "content_block_delta" not in log, "streams are not logged per chunk"


async def test_cli_verify_rebuild_export_and_audit(populated: Any) -> None:
    service, client, ids = populated
    healthy = await cli(service, "verify")
    assert healthy.returncode == 0 and "0 problems found" in healthy.stdout
    exported = await cli(service, "export", "--user", "alice")
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    api = (await client.get("/audit/events", headers=auth("alice"))).json()["events"]
    assert lines == api
    table = await cli(service, "audit", "--user", "bob")
    assert all(rid in table.stdout for rid in ids["bob"]) and "2 requests" in table.stdout

    # Damage the read model and the log behind the service's back.
    reopened = await execute(
        service.database_url,
        "UPDATE requests SET status = 'running', last_seq = 2 WHERE request_id = :rid",
        rid=ids["alice"][0],
    )
    holed = await execute(
        service.database_url,
        "DELETE FROM events WHERE request_id = :rid AND seq = 3",
        rid=ids["bob"][0],
    )
    assert reopened == holed == 1
    broken = await cli(service, "verify")
    assert broken.returncode == 1
    assert f"{ids['alice'][0]}  status: row has 'running'" in broken.stdout
    assert f"{ids['bob'][0]}  seq is not dense" in broken.stdout
    repaired = await cli(service, "rebuild", "--repair")
    assert repaired.returncode == 1, "a gap in the log cannot be repaired: still an error"
    assert f"{ids['alice'][0]}  status: row has 'running', events say 'completed'  (repaired)" in (
        repaired.stdout
    )
    assert "problems repaired, 1 left" in repaired.stdout
    after = await cli(service, "verify")
    assert ids["alice"][0] not in after.stdout, "the read model was rebuilt from the events"
    assert ids["bob"][0] in after.stdout, "a gap in the log cannot be repaired, only reported"
