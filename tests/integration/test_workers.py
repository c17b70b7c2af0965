"""Several worker processes on one SQLite file (``GENSTREAM_WORKERS``): a stream served by
one worker follows a generation run by another, a worker that dies is replaced and its
generations end as interrupted, the log writer is replaced when it dies or hangs, a write
the database refuses is a 503 (with one process too), and stopping the service stops
every worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.benchlib.procstat import family
from tests.integration.test_api_contract import assert_problem
from tests.support.invariants import assert_well_formed
from tests.support.server import ServiceProcess
from tests.support.sse_client import read_stream, runner_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("backend", ["sqlite"], indirect=True),
]

WORKERS = {
    "GENSTREAM_WORKERS": "2",
    "GENSTREAM_RUNNERS": "2",
    "GENSTREAM_LEASE_S": "2",
    "GENSTREAM_LEASE_RENEW_S": "0.5",
    # Streams also re-read the log this often, and when a ping is due: far longer than
    # these tests, so only the commits the workers ship each other keep a stream moving.
    "GENSTREAM_POLL_INTERVAL_S": "120",
    "GENSTREAM_SSE_PING_INTERVAL_S": "120",
}


def workers_of(service: ServiceProcess) -> set[int]:
    """The supervisor's worker processes (they start none of their own)."""
    assert service.proc is not None
    return {pid for pid in family(service.proc.pid)[1:] if not _is_log_writer(pid)}


def log_writers_of(service: ServiceProcess) -> set[int]:
    """The supervisor's log writer processes (one while it runs)."""
    assert service.proc is not None
    return {pid for pid in family(service.proc.pid)[1:] if _is_log_writer(pid)}


def _is_log_writer(pid: int) -> bool:
    try:
        return b"app.store.writer" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


async def linked(base: str) -> None:
    """Wait until both workers ship their commits to each other (each scrape is answered
    by whichever worker accepts the connection)."""
    peers: dict[str, float] = {}
    async with asyncio.timeout(20):
        while len(peers) < 2 or min(peers.values()) < 1:
            async with httpx.AsyncClient(timeout=10) as client:
                text = (await client.get(f"{base}/metrics")).text
            samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
            pid = next(name for name in samples if name.startswith("genstream_worker_info"))
            peers[pid] = float(samples["genstream_peers"])


async def client_on(base: str, *, not_node: str) -> tuple[httpx.AsyncClient, str]:
    """A client whose one keep-alive connection is served by a worker other than
    ``not_node`` (each connection goes to whichever worker accepts it first)."""
    for _ in range(200):
        client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1))
        node = str((await client.get(f"{base}/health")).json()["node"])
        if node != not_node:
            return client, node
        await client.aclose()
    raise AssertionError(f"every connection reached {not_node}")


async def test_a_stream_on_one_worker_follows_a_generation_on_the_other(
    service_factory: Any,
) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="30", **WORKERS)
    base = service.base_url
    assert len(workers_of(service)) == 2
    await linked(base)
    async with httpx.AsyncClient(timeout=60) as client:
        rid = (await client.post(f"{base}/assistant/request", json={"prompt": "p"})).json()[
            "request_id"
        ]
        runner, seen = await runner_of(client, base, rid)
        other, node = await client_on(base, not_node=runner)
        try:
            rest = await read_stream(other, f"{base}/assistant/stream/{rid}", last_event_id=seen)
            assert (await other.get(f"{base}/health")).json()["node"] == node
            metrics = (await other.get(f"{base}/metrics")).text
        finally:
            await other.aclose()
        stored = (await client.get(f"{base}/assistant/requests/{rid}/events")).json()["events"]
    assert rest.events == stored[seen:], "each event once, in order, from the other worker"
    assert rest.events[-1]["type"] == "complete"
    assert_well_formed(stored, rid)
    received = next(
        line for line in metrics.splitlines() if 'peer_events_total{direction="received"}' in line
    )
    assert float(received.split()[-1]) >= len(rest.events), "live events came from the runner"


async def test_many_streams_across_workers_lose_nothing(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="5", **WORKERS)
    base = service.base_url
    await linked(base)

    async def one(n: int) -> tuple[str, list[dict[str, Any]]]:
        # A client each: its connections land on either worker.
        async with httpx.AsyncClient(timeout=60) as client:
            posted = await client.post(f"{base}/assistant/request", json={"prompt": f"{n}"})
            rid = posted.json()["request_id"]
            return rid, (await read_stream(client, f"{base}/assistant/stream/{rid}")).events

    results = await asyncio.gather(*(one(n) for n in range(5)))
    async with httpx.AsyncClient(timeout=60) as client:
        for rid, events in results:
            stored = (await client.get(f"{base}/assistant/requests/{rid}/events")).json()
            assert events == stored["events"]
            assert_well_formed(events, rid)
            assert events[-1]["type"] == "complete"


async def test_a_dead_worker_is_replaced_and_its_generations_end_interrupted(
    service_factory: Any,
) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="200", **WORKERS)
    base = service.base_url
    before = workers_of(service)
    async with httpx.AsyncClient(timeout=60) as client:
        rid = (await client.post(f"{base}/assistant/request", json={"prompt": "p"})).json()[
            "request_id"
        ]
        _, seen = await runner_of(client, base, rid)
    for pid in before:  # both: whichever ran it is gone
        os.kill(pid, signal.SIGKILL)
    async with httpx.AsyncClient(timeout=60) as client:  # (new connections)
        rest = await read_stream(client, f"{base}/assistant/stream/{rid}", last_event_id=seen)
        after = workers_of(service)
        stored = (await client.get(f"{base}/assistant/requests/{rid}/events")).json()["events"]
    assert len(after) == 2 and not after & before, "the supervisor started two new workers"
    assert rest.events[-1]["type"] == "error" and rest.events[-1]["code"] == "interrupted"
    assert rest.events == stored[seen:]
    assert_well_formed(stored, rid)


async def test_the_log_writer_commits_for_every_worker_and_is_replaced_when_it_dies(
    service_factory: Any,
) -> None:
    # (Never shedding: the commits held up here would trip it.)
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="5", GENSTREAM_SHED_LAG_MS="0", **WORKERS
    )
    base = service.base_url
    (writer,) = log_writers_of(service)
    assert service.proc is not None
    supervisor = _stat(service.proc.pid)
    # Lower in priority than the workers, and in their session: where Linux schedules
    # by session, a session of its own would make the priority count for nothing.
    assert (_stat(writer)["nice"], _stat(writer)["session"]) == (10, supervisor["session"])
    await linked(base)
    first = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1))
    node = str((await first.get(f"{base}/health")).json()["node"])
    second, _ = await client_on(base, not_node=node)  # (one keep-alive connection each)
    try:
        os.kill(writer, signal.SIGSTOP)  # commits wait for it: none is made in a worker
        try:
            posting = asyncio.ensure_future(
                first.post(f"{base}/assistant/request", json={"prompt": "p"})
            )
            done, _ = await asyncio.wait([posting], timeout=1.0)
            assert not done, "a request is not created while the log writer is stopped"
        finally:
            os.kill(writer, signal.SIGCONT)
        posted = await posting
        assert posted.status_code == 201
        rids = [posted.json()["request_id"]]
        await read_stream(first, f"{base}/assistant/stream/{rids[0]}")  # (nothing in flight)
        os.kill(writer, signal.SIGKILL)
        for client in (first, second):  # each waits for the new writer
            posted = await client.post(f"{base}/assistant/request", json={"prompt": "q"})
            assert posted.status_code == 201, posted.text
            rids.append(posted.json()["request_id"])
        for rid in rids:
            events = (await read_stream(first, f"{base}/assistant/stream/{rid}")).events
            stored = (await first.get(f"{base}/assistant/requests/{rid}/events")).json()
            assert events == stored["events"] and events[-1]["type"] == "complete"
            assert_well_formed(events, rid)
    finally:
        await first.aclose()
        await second.aclose()
    (replaced,) = log_writers_of(service)
    assert replaced != writer, "the supervisor started a new log writer"


async def test_a_log_writer_that_answers_nothing_is_killed_and_replaced(
    service_factory: Any,
) -> None:
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="5",
        GENSTREAM_SHED_LAG_MS="0",
        GENSTREAM_SQLITE_BUSY_TIMEOUT_MS="500",
        GENSTREAM_WRITER_WATCHDOG_S="1",
        **WORKERS,
    )
    base = service.base_url
    (hung,) = log_writers_of(service)
    os.kill(hung, signal.SIGSTOP)  # alive, and answering nothing
    async with httpx.AsyncClient(timeout=60) as client:
        # The batch waits, unread, in the stopped writer's socket; once the watchdog has
        # killed it, the worker sends it to the replacement.
        posted = await client.post(f"{base}/assistant/request", json={"prompt": "p"})
        assert posted.status_code == 201, posted.text
        rid = posted.json()["request_id"]
        events = (await read_stream(client, f"{base}/assistant/stream/{rid}")).events
        stored = (await client.get(f"{base}/assistant/requests/{rid}/events")).json()
    assert events == stored["events"] and events[-1]["type"] == "complete"
    assert_well_formed(events, rid)
    assert _state(hung) in ("gone", "Z"), "the watchdog killed the hung writer"
    (replaced,) = log_writers_of(service)
    assert replaced != hung
    assert f"the log writer (pid {hung}) answered nothing" in service.log()


async def test_a_log_writer_that_dies_while_the_service_stops_is_replaced_for_the_last_commits(
    service_factory: Any,
) -> None:
    # (A token every 5 s: no commit is in flight when the writer is killed, so the one
    # that ends the generation is the first after it.)
    service = service_factory(
        GENSTREAM_DEMO_TOKEN_DELAY_MS="5000", GENSTREAM_SHUTDOWN_GRACE_S="1", **WORKERS
    )
    base = service.base_url
    async with httpx.AsyncClient(timeout=60) as client:
        rid = (await client.post(f"{base}/assistant/request", json={"prompt": "p"})).json()[
            "request_id"
        ]
        await runner_of(client, base, rid)  # (running)
    (writer,) = log_writers_of(service)
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    os.kill(writer, signal.SIGKILL)  # before the workers' last commits, a grace away
    assert service.proc.wait(timeout=60) == 0
    service.proc = None
    with contextlib.closing(sqlite3.connect(service.db_path)) as db:
        rows = db.execute(
            "SELECT type, data FROM events WHERE request_id = ? ORDER BY seq", (rid,)
        ).fetchall()
    assert rows[-1][0] == "error" and json.loads(rows[-1][1])["code"] == "interrupted", (
        "the generation was ended, through a new log writer, before the service stopped"
    )
    assert "the log writer exited with -9; replacing it" in service.log()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_write_the_database_refuses_is_a_503_and_loses_nothing(
    service_factory: Any, workers: str
) -> None:
    # (Never shedding: the held lock would trip it, answering 429 before the log is tried.)
    service = service_factory(
        GENSTREAM_SHED_LAG_MS="0",
        GENSTREAM_SQLITE_BUSY_TIMEOUT_MS="300",
        **{**WORKERS, "GENSTREAM_WORKERS": workers},
    )
    base = service.base_url
    async with httpx.AsyncClient(timeout=60) as client:
        first = (await client.post(f"{base}/assistant/request", json={"prompt": "p"})).json()
        await read_stream(client, f"{base}/assistant/stream/{first['request_id']}")
        before = await client.get(f"{base}/assistant/requests/{first['request_id']}/events")
        lock = sqlite3.connect(service.db_path, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")  # the write lock, held past the busy timeout
            refused = await client.post(f"{base}/assistant/request", json={"prompt": "q"})
        finally:
            lock.close()
        body = assert_problem(refused, 503, "log_unavailable")
        assert refused.headers["Retry-After"] == "1"
        assert "nothing of it was stored" in body["detail"]
        posted = await client.post(f"{base}/assistant/request", json={"prompt": "r"})
        assert posted.status_code == 201, "once the lock is free, writes go through"
        rid = posted.json()["request_id"]
        events = (await read_stream(client, f"{base}/assistant/stream/{rid}")).events
        assert events[-1]["type"] == "complete"
        after = await client.get(f"{base}/assistant/requests/{first['request_id']}/events")
        listed = (await client.get(f"{base}/audit/requests")).json()
    assert after.json() == before.json(), "what was stored before stays"
    assert len(listed["requests"]) == 2, "the refused request was not created"


async def test_stopping_the_service_stops_every_worker(service_factory: Any) -> None:
    service = service_factory(**WORKERS)
    workers = workers_of(service)
    (writer,) = log_writers_of(service)
    assert len(workers) == 2
    assert service.terminate() == 0
    for pid in [*workers, writer]:
        assert _state(pid) in ("gone", "Z"), "no worker, nor the log writer, outlives the service"


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command's name: state, ppid, pgrp, session, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _stat(pid: int) -> dict[str, int]:
    fields = _stat_fields(pid)
    return {"session": int(fields[3]), "nice": int(fields[16])}


def _state(pid: int) -> str:
    try:
        return _stat_fields(pid)[0]
    except OSError:
        return "gone"
