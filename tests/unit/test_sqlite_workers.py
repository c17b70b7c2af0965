"""Worker processes sharing one SQLite file take turns at its write lock: a worker with
nothing to claim does not take a turn."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.exc import IntegrityError, OperationalError

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


async def test_the_write_connection_is_kept_and_a_failed_transaction_gives_it_back(
    migrated_sqlite_url: str,
) -> None:
    engines = create_engines(migrated_sqlite_url, sqlite_workers=True, sqlite_busy_timeout_ms=50)
    threads = engines.threads
    assert threads is not None
    checkouts: list[object] = []
    event.listen(threads.write_engine, "checkout", lambda *_: checkouts.append(None))
    insert = "INSERT INTO purged_requests (request_id, user_id, purged_at) VALUES (?, 'u', ?)"
    at = "2026-01-01 00:00:00.000000"

    def add(request_id: str, *, then_fail: bool = False) -> Callable[[Connection], None]:
        def run(conn: Connection) -> None:
            conn.exec_driver_sql(insert, (request_id, at))
            if then_fail:
                raise RuntimeError("the transaction's work failed")

        return run

    try:
        await engines.transact(add("r-1"))
        await engines.transact(add("r-2"))
        assert len(checkouts) == 1, "the transactions that succeed share one check-out"
        with pytest.raises(RuntimeError):
            await engines.transact(add("r-3", then_fail=True))
        with pytest.raises(IntegrityError):
            await engines.transact(add("r-1"))  # (a duplicate key)
        other = sqlite3.connect(migrated_sqlite_url.split(":///", 1)[1], isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        try:
            with pytest.raises(OperationalError):
                await engines.transact(add("r-4"))  # (its BEGIN times out)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await engines.transact(add("r-5"))
        assert len(checkouts) == 4, "each failed transaction gave its connection back"
        rows = await engines.transact(
            lambda conn: conn.exec_driver_sql("SELECT request_id FROM purged_requests").all()
        )
        assert sorted(r for (r,) in rows) == ["r-1", "r-2", "r-5"]
    finally:
        await engines.dispose()
