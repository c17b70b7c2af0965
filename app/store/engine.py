"""Database engines for the log: one for writes, one for reads.

Everything backend-specific lives here.

- SQLite: WAL journal, ``synchronous``, busy timeout, and ``BEGIN IMMEDIATE`` for writers
  (a deferred transaction that reads before it writes can fail with SQLITE_BUSY when
  another writer commits in between; IMMEDIATE takes the write lock up front and waits).
  One process owns the file, and BEGIN IMMEDIATE already serializes its writers.
- PostgreSQL: several processes append at once, so each group commit first takes
  ``LOCK TABLE events IN EXCLUSIVE MODE`` (readers are not blocked). Group commits are
  then serialized across nodes: seq assignment and admission limits see every earlier
  commit, and the global ``events.id`` order equals the commit order, so an audit reader
  paging by id never skips an event that a slower transaction commits later. The cost is
  one lock per group commit, not per event. Commits also NOTIFY ``genstream_events`` so
  every node wakes its subscribers (``store/notify.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

NOTIFY_CHANNEL = "genstream_events"


@dataclass(frozen=True, slots=True)
class Engines:
    """The write engine (group commit, queue claims) and the read engine (everything else)."""

    write: AsyncEngine
    read: AsyncEngine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.write.dialect.name

    @property
    def shared(self) -> bool:
        """Whether several processes may use this database at once (PostgreSQL)."""
        return self.dialect != "sqlite"

    async def serialize_appends(self, conn: AsyncConnection) -> None:
        """Order this group commit after every other node's (see the module docstring)."""
        if self.shared:
            await conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))

    async def notify_appended(self, conn: AsyncConnection, last_seqs: dict[str, int]) -> None:
        """Tell the other nodes which streams grew (delivered when the transaction commits)."""
        if self.shared and last_seqs:
            await conn.execute(
                text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
                {
                    "channel": NOTIFY_CHANNEL,
                    "payloads": [f"{rid} {seq}" for rid, seq in last_seqs.items()],
                },
            )

    async def schema_version(self) -> str | None:
        """The Alembic revision the database is at; None when it has never been migrated."""
        async with self.read.connect() as conn:
            has_table = await conn.run_sync(lambda sync: inspect(sync).has_table("alembic_version"))
            if not has_table:
                return None
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return None if version is None else str(version)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.write.dispose()
        if self.read is not self.write:
            await self.read.dispose()


def create_engines(
    url: str, *, sqlite_synchronous: str = "NORMAL", sqlite_busy_timeout_ms: int = 5_000
) -> Engines:
    """Engines for ``url``, tuned for its backend."""
    if not url.startswith("sqlite"):
        engine = create_async_engine(url, pool_pre_ping=True)
        return Engines(write=engine, read=engine)
    _ensure_parent_dir(url)
    write = create_async_engine(url, pool_size=1, max_overflow=1)
    read = create_async_engine(url, pool_size=8, max_overflow=8)
    _configure_sqlite(write, sqlite_synchronous, sqlite_busy_timeout_ms, begin="BEGIN IMMEDIATE")
    _configure_sqlite(read, sqlite_synchronous, sqlite_busy_timeout_ms, begin="BEGIN")
    return Engines(write=write, read=read)


def _configure_sqlite(engine: AsyncEngine, synchronous: str, busy_ms: int, *, begin: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver so that ``begin`` below decides
        # how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)


def _ensure_parent_dir(url: str) -> None:
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
