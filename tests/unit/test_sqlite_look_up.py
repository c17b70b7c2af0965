"""A request's row is read on the event loop, and on a reader thread while SQLite is locked."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection

from app.domain import events as ev
from app.store.engine import create_engines
from app.store.log import _GET, EventLog, NewRequest, RequestRecord, record_of
from tests.contract.conftest import migrate

pytestmark = pytest.mark.anyio

RID = "01900001-0000-7000-8000-000000000001"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "g.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


async def _add_one_request(path: Path) -> None:
    engines = create_engines(f"sqlite+aiosqlite:///{path}")
    log = EventLog(engines)
    await log.start()
    await log.create(
        NewRequest(request_id=RID, user_id="alice", mode="chat"),
        [ev.Created(mode="chat", prompt="hi"), ev.Status(status="queued", queue_position=1)],
    )
    await engines.dispose()


async def test_the_read_is_the_same_on_the_event_loop_and_on_a_reader_thread(
    path: Path,
) -> None:
    await _add_one_request(path)
    engines = create_engines(f"sqlite+aiosqlite:///{path}")
    try:
        log = EventLog(engines)
        on_loop = await log.get(RID)
        assert on_loop is not None
        assert (on_loop.user_id, on_loop.status, on_loop.last_seq) == ("alice", "queued", 2)
        assert on_loop.created_at.tzinfo is not None
        assert on_loop == await engines.query(_core_read)
        assert await log.get("01900001-0000-7000-8000-00000000ffff") is None
    finally:
        await engines.dispose()


def _core_read(conn: Connection) -> RequestRecord:
    """The same row through SQLAlchemy Core and its column types, on a reader thread."""
    return record_of(conn.execute(_GET, {"rid": RID}).one())


async def test_a_locked_database_is_waited_for_on_a_reader_thread_not_the_event_loop(
    path: Path,
) -> None:
    await _add_one_request(path)
    # Another program holds SQLite's exclusive lock, which WAL readers must wait for.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("COMMIT")
    engines = create_engines(f"sqlite+aiosqlite:///{path}")
    try:
        read = asyncio.ensure_future(EventLog(engines).get(RID))
        started = time.monotonic()
        await asyncio.sleep(0)  # (the read's first step: the event loop's attempt)
        assert time.monotonic() - started < 1.0, "the event loop waited for the lock"
        assert not read.done(), "the event loop's own read met the lock and handed over"
        holder.close()
        record = await read
        assert record is not None
        assert record.user_id == "alice"
    finally:
        holder.close()
        await engines.dispose()
