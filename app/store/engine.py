"""Database engines for the log, and the two ways the service talks to them.

What differs by backend lives here, but for the SQLite statements of the write
transactions (``sqlite_sql``, called from the log and the queue). The service runs its
statements as plain functions of a synchronous SQLAlchemy ``Connection``, through
``Engines.transact`` (one write transaction) and ``Engines.query`` (a read):

- SQLite: those functions run on worker threads with the standard ``sqlite3`` driver, one
  hand-off per transaction however many statements it holds. (Through aiosqlite every
  statement costs several hand-offs, each waiting for a turn of a busy event loop: under
  load a 200-event group commit took 200 ms that way, and one statement's worth of CPU
  this way.) One thread owns each process's only write connection, so writers (the group
  commit, queue claims) queue in the process, never in SQLite's busy handler, which
  sleeps. When several worker processes share the file (``GENSTREAM_WORKERS``), their
  write threads also take turns on an ``flock`` of ``<file>.write-lock``, which wakes the
  next writer as soon as the lock is free, so they do not meet in the busy handler
  either; each commit's events reach the other workers through ``store/peers.py``. WAL
  journal, ``synchronous``, busy timeout (for other processes,
  such as the CLI), ``BEGIN IMMEDIATE`` for writes: a deferred transaction that reads
  before it writes could fail with SQLITE_BUSY. Reads run in autocommit unless they ask
  for a ``snapshot``. A read of one row by primary key (``Engines.look_up``) runs on
  the event loop's own connection instead, and on a reader thread only when SQLite is
  busy.
- PostgreSQL: the same functions run on the async engine through ``run_sync``. Several
  processes append at once, so each group commit first takes ``LOCK TABLE events IN
  EXCLUSIVE MODE`` (readers are not blocked). Group commits are then serialized across
  nodes: seq assignment and admission limits see every earlier commit, and the global
  ``events.id`` order equals the commit order, so an audit reader paging by id never
  skips an event that a slower transaction commits later. The cost is one lock per group
  commit, not per event. Commits also NOTIFY ``genstream_events`` so every node wakes its
  subscribers (``store/notify.py``).

The async engines (``write``, ``read``) remain for everything off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    insert,
    inspect,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.store.tables import events, requests, sqlite_text

T = TypeVar("T")

EventRow = tuple[str, int, str, int, str]
"""An event's row as the group commit builds it, in ``EVENT_ROW``'s column order."""
EVENT_ROW = ("request_id", "seq", "type", "v", "data")

NOTIFY_CHANNEL = "genstream_events"


class SQLiteThreads:
    """Synchronous SQLite engines driven from worker threads: one writer, a few readers."""

    def __init__(
        self,
        url: str,
        *,
        synchronous: str,
        busy_ms: int,
        readers: int = 4,
        write_lock: Path | None = None,
        path: Path | None = None,
    ) -> None:
        sync_url = url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1)
        self._path = path
        self._loop_db: sqlite3.Connection | None = None
        self._closed = False
        # Other processes write to the same file: take turns on this lock file first.
        self._lock_fd = (
            None if write_lock is None else os.open(write_lock, os.O_RDWR | os.O_CREAT, 0o600)
        )
        args = {"check_same_thread": False}
        self.write_engine = create_engine(sync_url, pool_size=1, max_overflow=0, connect_args=args)
        self.read_engine = create_engine(
            sync_url, pool_size=readers, max_overflow=0, connect_args=args
        )
        _configure_sqlite(self.write_engine, synchronous, busy_ms, begin="BEGIN IMMEDIATE")
        _configure_sqlite(self.read_engine, synchronous, busy_ms, begin=None)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write")
        # The write connection, checked out between transactions, and the lock that keeps
        # it to one transaction at a time whatever thread calls (the lock file does not:
        # its turns are per process).
        self._write_conn: Connection | None = None
        self._write_mutex = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-read")

    async def transact(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in one write transaction, on the write thread."""

        return await asyncio.get_running_loop().run_in_executor(
            self._writer, self.run_transaction, fn
        )

    def run_transaction(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in one write transaction on the calling thread (``transact``'s write
        thread, or the log writer process's only thread).

        The write connection stays checked out between transactions: a check-out and
        return through the pool cost about 50 us a transaction, as much again as a small
        transaction itself (docs/benchmarks.md, "The log writer's reads"). A transaction
        that fails (its ``BEGIN`` included) gives its connection back to the pool, and
        the next one checks one out again, as each transaction did before.
        """
        with self._write_mutex, self._turn():
            conn = self._write_conn
            if conn is None:
                conn = self._write_conn = self.write_engine.connect()
            try:
                with conn.begin(), _wrapped_driver_errors():
                    return fn(conn)
            except BaseException:
                self._write_conn = None
                conn.close()
                raise

    @property
    def can_look_up(self) -> bool:
        """Whether ``look_up`` can run: the database is a file (each connection to an
        in-memory one would see a database of its own) and the engines are not closed."""
        return self._path is not None and not self._closed

    def look_up(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the event loop's own read connection, right away, in autocommit.

        For point reads by primary key, and a stream's backlog page (a range of one
        index, ``EventLog.backlog``): a point read costs about 20 us here, against about
        230-290 us of CPU through a reader thread and Core, most of it the hand-off. The
        connection is read-only and does not wait for locks (``busy_timeout`` 0): when
        SQLite is busy, which in WAL mode readers meet mostly under another program's
        exclusive lock, it raises, and the caller reads on a reader thread instead
        (``Engines.look_up``). Call it from the event loop's thread only.
        """
        db = self._loop_db
        if db is None:
            db = self._loop_db = self._open_loop_db()
        return fn(db)

    def _open_loop_db(self) -> sqlite3.Connection:
        assert self._path is not None
        # Read-only, and never creating the file: a missing database is an error here
        # (and a read on a reader thread), not a new empty file.
        uri = f"{self._path.resolve().as_uri()}?mode=ro"
        # (``timeout=0`` is ``busy_timeout`` 0: a lock is an error at once.)
        return sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)

    def close_loop_db(self) -> None:
        """Close the event loop's connection (on the loop's thread, which owns it), for good."""
        self._closed = True
        if self._loop_db is not None:
            self._loop_db.close()
            self._loop_db = None

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn at the write lock file, when other processes share it."""
        if self._lock_fd is None:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # (releases the GIL while it waits)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def query(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` on a read connection, on a reader thread."""

        def run() -> T:
            with self.read_engine.connect() as conn, _wrapped_driver_errors():
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    def close(self) -> None:
        """Wait for running work, then close the connections."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        conn, self._write_conn = self._write_conn, None
        try:
            if conn is not None:
                conn.close()
        finally:
            self.write_engine.dispose()
            self.read_engine.dispose()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


@dataclass(frozen=True, slots=True)
class Engines:
    """How the service reaches its database: ``transact`` and ``query`` for the service's
    own statements, the async ``write`` and ``read`` engines for everything else."""

    write: AsyncEngine
    read: AsyncEngine
    threads: SQLiteThreads | None = field(default=None)
    sqlite_workers: bool = False
    """Whether several worker processes share this SQLite file."""

    async def transact(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction and return what it returns.

        On SQLite, cancelling the caller does not stop the transaction: it commits (or
        fails) on its thread all the same. Callers that must know the outcome (the log's
        writer) are never cancelled; a claim cut short by shutdown is released at the
        next start, like any unstarted claim.
        """
        if self.threads is not None:
            return await self.threads.transact(fn)
        async with self.write.begin() as conn:
            return await conn.run_sync(fn)

    async def look_up(
        self, on_sqlite: Callable[[sqlite3.Connection], T], fn: Callable[[Connection], T]
    ) -> T:
        """A point read by primary key, or a stream's backlog page: on SQLite
        ``on_sqlite`` runs on the event loop (``SQLiteThreads.look_up``), and ``fn`` as
        ``query`` when SQLite is busy; on PostgreSQL, ``fn`` as ``query``."""
        if self.threads is not None and self.threads.can_look_up:
            try:
                return self.threads.look_up(on_sqlite)
            except sqlite3.Error:
                # Busy, mostly: wait for the lock on a reader thread, not on the event loop
                # (where any other error is raised again, as SQLAlchemy's, like every read's).
                pass
        return await self.query(fn)

    async def query(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on a read connection (autocommit on SQLite)."""
        if self.threads is not None:
            return await self.threads.query(fn)
        async with self.read.connect() as conn:
            return await conn.run_sync(fn)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.write.dialect.name

    @property
    def postgres(self) -> bool:
        """Whether this is PostgreSQL (else SQLite)."""
        return self.dialect != "sqlite"

    @property
    def shared(self) -> bool:
        """Whether other processes append to this log too: PostgreSQL nodes, or worker
        processes sharing one SQLite file."""
        return self.postgres or self.sqlite_workers

    def serialize_appends(self, conn: Connection) -> None:
        """Order this group commit after every other node's (see the module docstring)."""
        if self.postgres:
            conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))

    def insert_requests(self, conn: Connection, rows: list[dict[str, Any]], at: datetime) -> None:
        """Insert new requests' rows: the ``_HEADER`` columns, and ``at`` as both timestamps.

        SQLite: one ``executemany`` on the driver's connection, as for the events.
        """
        if not rows:
            return
        if self.postgres:
            stamped = [{**r, "created_at": at, "updated_at": at} for r in rows]
            conn.execute(insert(requests), stamped)
            return
        when = sqlite_text(at)
        driver_of(conn).executemany(
            _INSERT_REQUEST, [(*(r[c] for c in _HEADER), when, when) for r in rows]
        )

    def insert_events(self, conn: Connection, rows: list[EventRow], at: datetime) -> list[int]:
        """Insert event rows (``EVENT_ROW`` columns), committed ``at``; their ids, in order.

        SQLite: one ``executemany`` of a prepared statement on the driver's connection (its
        C loop; no SQLAlchemy in between), and the ids computed rather than returned. The
        transaction holds the database's write lock, so the rows take consecutive rowids
        ending at ``last_insert_rowid()``. Elsewhere: a Core ``INSERT ... RETURNING``.
        """
        if not rows:
            return []
        if self.postgres:
            statement = insert(events).returning(events.c.id, sort_by_parameter_order=True)
            stamped = [{**dict(zip(EVENT_ROW, r, strict=True)), "at": at} for r in rows]
            return [row[0] for row in conn.execute(statement, stamped)]
        when = sqlite_text(at)
        db = driver_of(conn)
        db.executemany(
            "INSERT INTO events (request_id, seq, type, v, data, at) VALUES (?, ?, ?, ?, ?, ?)",
            [(*r, when) for r in rows],
        )
        last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
        return list(range(last - len(rows) + 1, last + 1))

    def update_heads(
        self, conn: Connection, heads: dict[str, tuple[int, str | None]], at: datetime
    ) -> None:
        """Set each request's ``last_seq`` (and ``updated_at``) in the read model, and its
        ``status`` where the batch changed it (``None``: unchanged).

        Most appends leave the status as it was (a chunk of a running request), and a
        statement that sets ``status`` rewrites its entries in the two indexes that hold
        it even when the value is the same: on SQLite that made a group commit of 18
        chunks write 68 pages to the log rather than 46, with a quarter more CPU in the
        transaction, measured in isolation (docs/benchmarks.md, "Heads without their
        status"). So those rows take a statement that leaves ``status`` out. SQLite:
        ``executemany`` on the driver's connection, as for the events themselves.
        """
        moved = [(rid, seq, status) for rid, (seq, status) in heads.items() if status is not None]
        kept = [(rid, seq) for rid, (seq, status) in heads.items() if status is None]
        if self.postgres:
            if moved:
                conn.execute(
                    _UPDATE_HEAD_AND_STATUS,
                    [{"b_id": r, "b_seq": q, "b_status": st, "b_at": at} for r, q, st in moved],
                )
            if kept:
                conn.execute(_UPDATE_HEAD, [{"b_id": r, "b_seq": q, "b_at": at} for r, q in kept])
            return
        when = sqlite_text(at)
        db = driver_of(conn)
        if moved:
            db.executemany(
                "UPDATE requests SET last_seq = ?, status = ?, updated_at = ? WHERE request_id = ?",
                [(seq, status, when, rid) for rid, seq, status in moved],
            )
        if kept:
            db.executemany(
                "UPDATE requests SET last_seq = ?, updated_at = ? WHERE request_id = ?",
                [(seq, when, rid) for rid, seq in kept],
            )

    def notify_appended(self, conn: Connection, last_seqs: dict[str, int]) -> None:
        """Tell the other nodes which streams grew (delivered when the transaction commits)."""
        if self.postgres and last_seqs:
            conn.execute(
                text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
                {
                    "channel": NOTIFY_CHANNEL,
                    "payloads": [f"{rid} {seq}" for rid, seq in last_seqs.items()],
                },
            )

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A read connection whose statements all see the same committed state."""
        async with self.read.connect() as conn:
            if self.postgres:
                await conn.execution_options(isolation_level="REPEATABLE READ")
            else:
                await conn.exec_driver_sql("BEGIN")
            yield conn

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
        if self.threads is not None:
            self.threads.close_loop_db()
            await asyncio.to_thread(self.threads.close)
        await self.write.dispose()
        if self.read is not self.write:
            await self.read.dispose()


def create_engines(
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    sqlite_busy_timeout_ms: int = 5_000,
    sqlite_workers: bool = False,
) -> Engines:
    """Engines for ``url``, tuned for its backend; ``sqlite_workers`` when this process is
    one of several worker processes sharing a SQLite file."""
    if not url.startswith("sqlite"):
        engine = create_async_engine(url, pool_pre_ping=True)
        return Engines(write=engine, read=engine)
    path = _ensure_parent_dir(url)
    write = create_async_engine(url, pool_size=1, max_overflow=0)
    read = create_async_engine(url, pool_size=8, max_overflow=8)
    sync, busy = sqlite_synchronous, sqlite_busy_timeout_ms
    _configure_sqlite(write.sync_engine, sync, busy, begin="BEGIN IMMEDIATE")
    _configure_sqlite(read.sync_engine, sync, busy, begin=None)
    lock = path.with_name(path.name + ".write-lock") if sqlite_workers and path else None
    threads = SQLiteThreads(url, synchronous=sync, busy_ms=busy, write_lock=lock, path=path)
    return Engines(write=write, read=read, threads=threads, sqlite_workers=lock is not None)


def _configure_sqlite(engine: Engine, synchronous: str, busy_ms: int, *, begin: str | None) -> None:
    @event.listens_for(engine, "connect")
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

    if begin is None:
        # Reads run in autocommit: each statement sees one committed state on its own, and
        # an explicit BEGIN would cost a round trip to the driver's thread per read.
        # ``Engines.snapshot`` opens a transaction where several statements must agree.
        return

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)


def _ensure_parent_dir(url: str) -> Path | None:
    """The database file's path (its directory created), or None for an in-memory one."""
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


_HEADER = (
    "request_id",
    "user_id",
    "mode",
    "track_id",
    "element_id",
    "status",
    "last_seq",
    "idempotency_key",
    "parent_request_id",
)
"""A new request's header columns, but its two timestamps."""
_INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(_HEADER)}, created_at, updated_at) "
    f"VALUES ({', '.join('?' * (len(_HEADER) + 2))})"
)
_UPDATE_HEAD = (
    update(requests)
    .where(requests.c.request_id == bindparam("b_id"))
    .values(last_seq=bindparam("b_seq"), updated_at=bindparam("b_at"))
)
"""A request's head where its status stays (PostgreSQL; ``Engines.update_heads``)."""
_UPDATE_HEAD_AND_STATUS = _UPDATE_HEAD.values(status=bindparam("b_status"))
"""A request's head and its new status (PostgreSQL)."""


def driver_of(conn: Connection) -> sqlite3.Connection:
    """The ``sqlite3`` connection under a SQLAlchemy one, inside its transaction: the group
    commit's and the claim's statements run on it directly (``sqlite_sql``), each a C call
    with no SQLAlchemy around it."""
    return cast(sqlite3.Connection, conn.connection.driver_connection)


@contextlib.contextmanager
def _wrapped_driver_errors() -> Iterator[None]:
    """Errors of statements run on the driver's connection (``driver_of``), raised as
    SQLAlchemy raises its own statements' (``IntegrityError`` for a duplicate key, and so
    on), so that callers catch one kind whichever way a statement ran."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
