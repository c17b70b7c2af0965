"""Worker processes sharing one SQLite file take turns at its write lock: a worker with
nothing to claim does not take a turn."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from app.domain import events as ev
from app.store.engine import Engines, create_engines
from app.store.log import EventLog, NewRequest
from app.store.queue import WorkQueue

pytestmark = pytest.mark.anyio


@pytest.fixture
async def two_workers(migrated_sqlite_url: str) -> AsyncIterator[tuple[Engines, Engines]]:
    a = create_engines(migrated_sqlite_url, sqlite_workers=True)
    b = create_engines(migrated_sqlite_url, sqlite_workers=True)
    yield a, b
    for engines in (a, b):
        await engines.dispose()


async def test_a_claim_with_nothing_to_claim_does_not_wait_for_the_write_lock(
    two_workers: tuple[Engines, Engines],
) -> None:
    a, b = two_workers
    log = EventLog(a)
    await log.start()
    rid = "01900001-0000-7000-8000-000000000000"
    await log.create(
        NewRequest(request_id=rid, user_id="u", mode="chat"),
        [ev.Created(mode="chat", prompt="hi"), ev.Status(status="queued", queue_position=1)],
    )
    first, second = WorkQueue(a, owner="a"), WorkQueue(b, owner="b")
    assert [c.request_id for c in await first.claim(4)] == [rid]

    holding, release = threading.Event(), threading.Event()

    def hold(_: Connection) -> None:
        holding.set()
        release.wait(10)

    other_commit = asyncio.ensure_future(a.transact(hold))  # worker a holds the lock
    try:
        assert await asyncio.to_thread(holding.wait, 10)
        async with asyncio.timeout(5):
            assert await second.claim(4) == [], "the request is a's: b has nothing to claim"
    finally:
        release.set()
        await other_commit
    await log.close()


async def test_the_write_connection_is_kept_and_a_failed_transaction_leaves_nothing(
    migrated_sqlite_url: str,
) -> None:
    engines = create_engines(migrated_sqlite_url, sqlite_workers=True)
    threads = engines.threads
    assert threads is not None
    insert = "INSERT INTO purged_requests (request_id, user_id, purged_at) VALUES (?, 'u', ?)"
    at = "2026-01-01 00:00:00.000000"

    def add(request_id: str, *, then_fail: bool = False) -> object:
        def run(conn: Connection) -> object:
            conn.exec_driver_sql(insert, (request_id, at))
            if then_fail:
                raise RuntimeError("the transaction's work failed")
            return conn

        return run

    try:
        first = await engines.transact(add("r-1"))
        assert await engines.transact(add("r-2")) is first, "one connection, kept checked out"
        with pytest.raises(RuntimeError):
            await engines.transact(add("r-3", then_fail=True))
        with pytest.raises(IntegrityError):
            await engines.transact(add("r-1"))  # (a duplicate: the driver's error)
        await engines.transact(add("r-4"))  # (after the failures, on a connection reset)
        rows = await engines.transact(
            lambda conn: conn.exec_driver_sql("SELECT request_id FROM purged_requests").all()
        )
        assert sorted(r for (r,) in rows) == ["r-1", "r-2", "r-4"]
    finally:
        await engines.dispose()
