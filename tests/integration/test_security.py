"""Authentication, ownership, stream tokens, rate limits and retention, from both sides."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from app.api.auth import mint_token
from tests.conftest import BACKENDS
from tests.support.invariants import assert_well_formed
from tests.support.server import ROOT, ServiceProcess
from tests.support.sse_client import read_stream

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", BACKENDS, indirect=True),
]

SECRET = "test-secret-of-forty-characters-0123456789"
UNKNOWN = "01900000-0000-7000-8000-000000000000"


def bearer(user: str, *, admin: bool = False, secret: str = SECRET) -> dict[str, str]:
    token = mint_token(secret, user, ttl=timedelta(minutes=5), admin=admin)
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["code"] == "unauthorized" and response.json()["detail"]


@pytest.fixture
def service(service_factory: Any) -> ServiceProcess:
    return service_factory(GENSTREAM_JWT_SECRET=SECRET, GENSTREAM_LOG_LEVEL="debug")


async def create(client: httpx.AsyncClient, user: str, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/assistant/request", json={"prompt": "a page", **body}, headers=bearer(user)
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_credentials_are_required_and_checked(service: ServiceProcess) -> None:
    now = datetime.now(UTC)
    forged = jwt.encode({"sub": "alice", "exp": now + timedelta(minutes=5)}, "x" * 40, "HS256")
    expired = jwt.encode({"sub": "alice", "exp": now - timedelta(minutes=5)}, SECRET, "HS256")
    no_sub = jwt.encode({"exp": now + timedelta(minutes=5)}, SECRET, "HS256")
    unsigned = jwt.encode({"sub": "alice", "exp": now + timedelta(minutes=5)}, None, "none")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        for headers in [
            {},
            {"Authorization": "Basic YWxpY2U6cHc="},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer not.a.jwt"},
            {"Authorization": f"Bearer {forged}"},
            {"Authorization": f"Bearer {expired}"},
            {"Authorization": f"Bearer {no_sub}"},
            {"Authorization": f"Bearer {unsigned}"},
        ]:
            assert_401(
                await client.post("/assistant/request", json={"prompt": "x"}, headers=headers)
            )
            assert_401(await client.get(f"/assistant/requests/{UNKNOWN}", headers=headers))
            assert_401(await client.get("/metrics", headers=headers))
        expired_reply = await client.get("/metrics", headers={"Authorization": f"Bearer {expired}"})
        assert "expired" in expired_reply.json()["detail"]
        for public in ["/health", "/ready", "/schema/openapi.json"]:
            assert (await client.get(public)).status_code == 200
        forbidden = await client.get("/metrics", headers=bearer("alice"))
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "admin_only"
        assert (await client.get("/metrics", headers=bearer("root", admin=True))).status_code == 200
        # Other issuers' tokens: no iat, and a clock a little ahead of ours, are fine.
        skewed = jwt.encode(
            {"sub": "alice", "exp": now + timedelta(minutes=5), "nbf": now + timedelta(seconds=10)},
            SECRET,
            "HS256",
        )
        ok = await client.get(
            f"/assistant/requests/{UNKNOWN}", headers={"Authorization": f"Bearer {skewed}"}
        )
        assert ok.status_code == 404


async def test_another_users_request_does_not_exist_for_you(service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        alice = await create(client, "alice", track_id="shared-name")
        rid = alice["request_id"]
        await read_stream(client, alice["stream_url"])
        checks = [
            ("GET", "/assistant/stream/{}"),
            ("GET", "/assistant/requests/{}"),
            ("GET", "/assistant/requests/{}/events"),
            ("GET", "/assistant/requests/{}/page"),
            ("POST", "/assistant/requests/{}/cancel"),
            ("GET", "/assistant/replay/{}"),
            ("POST", "/assistant/requests/{}/regenerate"),
        ]
        for method, path in checks:
            theirs = await client.request(method, path.format(rid), headers=bearer("bob"))
            nobody = await client.request(method, path.format(UNKNOWN), headers=bearer("bob"))
            assert theirs.status_code == nobody.status_code == 404, (method, path)
            strip = lambda r: {  # noqa: E731
                k: str(v).replace(rid, "ID").replace(UNKNOWN, "ID") for k, v in r.json().items()
            }
            assert strip(theirs) == strip(nobody), "the answer must not reveal existence"
            mine = await client.request(method, path.format(rid), headers=bearer("alice"))
            assert mine.status_code != 404, (method, path)
        bobs_view = await client.get("/tracks/shared-name/content", headers=bearer("bob"))
        assert bobs_view.json()["fields"] == []


async def test_stream_tokens_open_one_stream_only(service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        first = await create(client, "alice")
        second = await create(client, "alice")
        url = first["stream_url"]
        assert "?token=" in url
        # What a browser's EventSource does: the URL alone, no Authorization header.
        events = (await read_stream(client, url)).events
        assert_well_formed(events, first["request_id"])
        token = url.split("?token=", 1)[1]
        replay = await read_stream(
            client, f"/assistant/replay/{first['request_id']}?speed=0&token={token}"
        )
        assert replay.events == events
        for path in [
            f"/assistant/stream/{second['request_id']}?token={token}",
            f"/assistant/replay/{second['request_id']}?token={token}",
            f"/assistant/requests/{first['request_id']}?token={token}",
            f"/assistant/requests/{first['request_id']}/events?token={token}",
            f"/tracks/t/content?token={token}",
            f"/metrics?token={token}",
        ]:
            assert_401(await client.get(path))
        as_bearer = {"Authorization": f"Bearer {token}"}
        assert_401(
            await client.get(f"/assistant/requests/{first['request_id']}", headers=as_bearer)
        )
        user_token = bearer("alice")["Authorization"].split(" ", 1)[1]
        assert_401(await client.get(f"/assistant/stream/{first['request_id']}?token={user_token}"))
        expired = jwt.encode(
            {
                "sub": "alice",
                "scope": "stream",
                "rid": first["request_id"],
                "exp": datetime.now(UTC) - timedelta(minutes=5),
            },
            SECRET,
            "HS256",
        )
        assert_401(await client.get(f"/assistant/stream/{first['request_id']}?token={expired}"))
        status = (
            await client.get(f"/assistant/requests/{first['request_id']}", headers=bearer("alice"))
        ).json()
        assert "?token=" in status["stream_url"]
    log = service.log()
    assert token not in log and user_token not in log and expired not in log


async def test_new_requests_per_minute_per_mode_hold_across_restarts(
    service_factory: Any,
) -> None:
    service = service_factory(GENSTREAM_RATE_PER_MINUTE="3", GENSTREAM_DEMO_TOKEN_DELAY_MS="0")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        for n in range(3):
            ok = await client.post("/assistant/request", json={"prompt": f"{n}", "mode": "chat"})
            assert ok.status_code == 201
        refused = await client.post("/assistant/request", json={"prompt": "4", "mode": "chat"})
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_new_requests"
        assert "chat" in refused.json()["detail"]
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert refused.headers["ratelimit-limit"] == "3"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-policy"] == "3;w=60"
        other_mode = await client.post("/assistant/request", json={"prompt": "g"})
        assert other_mode.status_code == 201
    service.kill()
    service.start()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        again = await client.post("/assistant/request", json={"prompt": "5", "mode": "chat"})
        assert again.status_code == 429, "the count lives in the database, not in the process"


def test_local_mode_refuses_a_public_address(tmp_path: Path, backend: str) -> None:
    if backend == "postgresql":
        pytest.skip("the settings refuse the address before any database is opened")
    service = ServiceProcess(tmp_path / "open.db", {"GENSTREAM_HOST": "0.0.0.0"})
    try:
        with pytest.raises(RuntimeError, match="exited at start"):
            service.start(timeout_s=20)
    finally:
        service.stop()
    assert "GENSTREAM_JWT_SECRET" in service.log()


async def test_cli_mints_working_tokens(service: ServiceProcess) -> None:
    env = {**os.environ, "GENSTREAM_JWT_SECRET": SECRET}
    minted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "token", "--user", "carol", "--admin", "--ttl", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = minted.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "carol" and claims["role"] == "admin"
    assert claims["exp"] - time.time() <= 61
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
    no_secret = {k: v for k, v in os.environ.items() if k != "GENSTREAM_JWT_SECRET"}
    refused = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "token", "--user", "carol"],
        cwd=ROOT,
        env=no_secret,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "GENSTREAM_JWT_SECRET" in refused.stderr


async def test_retention_purges_ended_requests_and_reads_answer_410(
    service_factory: Any,
) -> None:
    service = service_factory(
        GENSTREAM_JWT_SECRET=SECRET,
        GENSTREAM_RETENTION_S="0.5",
        GENSTREAM_RETENTION_INTERVAL_S="0.2",
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        done = await create(client, "alice")
        rid = done["request_id"]
        await read_stream(client, done["stream_url"])
        deadline = time.monotonic() + 15
        while (
            await client.get(f"/assistant/requests/{rid}", headers=bearer("alice"))
        ).status_code != 410:
            assert time.monotonic() < deadline, "retention did not purge the ended request"
            await asyncio.sleep(0.1)
        for path in [
            "/assistant/stream/{}",
            "/assistant/requests/{}",
            "/assistant/requests/{}/events",
            "/assistant/requests/{}/page",
            "/assistant/replay/{}",
        ]:
            gone = await client.get(path.format(rid), headers=bearer("alice"))
            assert gone.status_code == 410 and gone.json()["code"] == "request_purged", path
            hidden = await client.get(path.format(rid), headers=bearer("bob"))
            assert hidden.status_code == 404, "a purged request stays invisible to others"
        assert (
            await client.post(f"/assistant/requests/{rid}/cancel", headers=bearer("alice"))
        ).status_code == 410


async def test_cli_purge_only_touches_ended_requests(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="200")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ended = (
            await client.post("/assistant/request", json={"prompt": "c", "mode": "chat"})
        ).json()
        await client.post(f"/assistant/requests/{ended['request_id']}/cancel")
        running = (await client.post("/assistant/request", json={"prompt": "slow"})).json()
        await read_stream(client, running["stream_url"], max_events=4)
        env = {**os.environ, "GENSTREAM_DATABASE_URL": service.database_url}
        purged = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "app.cli", "purge", "--older-than", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert purged.stdout.startswith("purged 1 requests")
        assert (await client.get(f"/assistant/requests/{ended['request_id']}")).status_code == 410
        rest = await read_stream(client, running["stream_url"], last_event_id=4)
        assert rest.events[-1]["type"] == "complete"


async def test_listing_shows_only_the_callers_requests(service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        mine = [(await create(client, "alice", mode="chat"))["request_id"] for _ in range(3)]
        await create(client, "bob", mode="chat")
        first = await client.get(
            "/assistant/requests", params={"limit": 2}, headers=bearer("alice")
        )
        page = first.json()
        rest = await client.get(
            "/assistant/requests", params={"after": page["next_after"]}, headers=bearer("alice")
        )
        listed = [r["request_id"] for r in page["requests"] + rest.json()["requests"]]
        assert listed == mine
        assert {r["user_id"] for r in page["requests"]} == {"alice"}
        bad = await client.get("/assistant/requests", params={"mode": "x"}, headers=bearer("alice"))
        assert bad.status_code == 400
