"""A request's row is read on the event loop, and on a reader thread while SQLite is locked."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection

from app.domain import events as ev
from app.store import sqlite_sql
from app.store.engine import Engines, create_engines
from app.store.log import _GET, EventLog, NewRequest, RequestRecord, record_of
from tests.contract.conftest import migrate

pytestmark = pytest.mark.anyio

RID = "01900001-0000-7000-8000-000000000001"
PARENT = "01900001-0000-7000-8000-000000000002"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "g.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


def _new(request_id: str = RID) -> NewRequest:
    """A request with every optional column set, each to a value of its own."""
    return NewRequest(
        request_id=request_id,
        user_id="alice",
        mode="field",
        track_id="track-1",
        element_id="Card-1_custom_title",
        idempotency_key=f"key-{request_id[-1]}",
        parent_request_id=PARENT,
    )


def _core_read(conn: Connection) -> RequestRecord:
    """The same row through SQLAlchemy Core and its column types, on a reader thread."""
    return record_of(conn.execute(_GET, {"rid": RID}).one())


def _read_on_the_loop(engines: Engines) -> bool:
    return engines.threads is not None and engines.threads._loop_db is not None


async def test_the_loop_reads_what_a_reader_thread_reads_and_each_commit_at_once(
    path: Path,
) -> None:
    engines = create_engines(f"sqlite+aiosqlite:///{path}")
    try:
        log = EventLog(engines)
        await log.start()
        assert await log.get(RID) is None
        assert _read_on_the_loop(engines), "the first read opened the loop's connection"
        await log.create(_new(), [ev.Created(mode="field", prompt="hi")])
        first = await log.get(RID)
        assert first is not None, "a commit is seen by the next read on the loop"
        assert engines.threads is not None
        on_loop = engines.threads.look_up(lambda db: sqlite_sql.request(db, RID))
        assert on_loop is not None, "the loop's own connection reads it, not a fallback"
        await log.append(RID, [ev.Status(status="queued", queue_position=1)])
        record = await log.get(RID)
        assert record is not None
        assert (record.status, record.last_seq) == ("queued", 2)
        assert record.updated_at > record.created_at == first.created_at
        assert record.created_at.tzinfo is not None
        assert (record.track_id, record.element_id) == ("track-1", "Card-1_custom_title")
        assert (record.idempotency_key, record.parent_request_id) == ("key-1", PARENT)
        assert record == await engines.query(_core_read)
    finally:
        await engines.dispose()
    assert not _read_on_the_loop(engines), "closed with the engines"


async def test_a_locked_database_is_waited_for_on_a_reader_thread_not_the_event_loop(
    path: Path,
) -> None:
    engines = create_engines(f"sqlite+aiosqlite:///{path}")
    log = EventLog(engines)
    await log.start()
    await log.create(_new(), [ev.Created(mode="field", prompt="hi")])
    await engines.dispose()
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


async def test_a_missing_database_file_is_not_created_by_a_read(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    engines = create_engines(f"sqlite+aiosqlite:///{missing}")
    try:
        assert engines.threads is not None
        with pytest.raises(sqlite3.OperationalError):
            engines.threads.look_up(lambda db: db.execute("SELECT 1").fetchone())
        assert not missing.exists()
    finally:
        await engines.dispose()
