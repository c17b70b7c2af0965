"""The group commit's reads and the claim on SQLite, as plain statements on the driver's
connection (``engine.driver_of``; the group commit's inserts and updates are
``Engines.insert_requests``, ``insert_events`` and ``update_heads``).

They run while the process holds the database's write lock (with worker processes, the
other workers wait for it), on a thread that holds the interpreter lock against the
event loop while it runs Python. With SQLAlchemy Core, a group commit of 20 appends (5
of them creations) took 2.9-3.7 ms of CPU and a claim 1.15 ms; as plain ``sqlite3``
statements, 0.8-1.3 ms and 0.31 ms (docs/benchmarks.md). On PostgreSQL the same work
runs as Core statements (``app/store/log.py``, ``app/store/queue.py``); the store
contract suite (``scripts/test`` runs it on both) holds both to the same behaviour, and
a query-plan test keeps these on their indexes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from app.domain.events import ACTIVE_STATUSES
from app.store.tables import requests, sqlite_datetime

_ACTIVE = sorted(ACTIVE_STATUSES)

QUEUED = "SELECT count(*) FROM requests WHERE status = 'queued'"


def marks(n: int) -> str:
    """``?, ?, ...``: ``n`` parameter markers for an ``IN`` list."""
    return ", ".join("?" * n)


def heads_sql(n: int) -> str:
    """The statement of ``heads`` for ``n`` requests."""
    return f"SELECT request_id, last_seq, status FROM requests WHERE request_id IN ({marks(n)})"


def active_sql(n: int) -> str:
    """The statement of ``active`` for ``n`` users."""
    return (
        "SELECT user_id, count(*) FROM requests "
        f"WHERE user_id IN ({marks(n)}) AND status IN ({marks(len(_ACTIVE))}) "
        "GROUP BY user_id"
    )


def recent_sql(users: int, modes: int) -> str:
    """The statement of ``recent`` for so many users and modes."""
    return (
        "SELECT user_id, mode, count(*), min(created_at) FROM requests "
        f"WHERE user_id IN ({marks(users)}) AND mode IN ({marks(modes)}) AND created_at > ? "
        "GROUP BY user_id, mode"
    )


REQUEST_COLUMNS = tuple(c.name for c in requests.c if not c.name.startswith("lease_"))
"""The read model's columns of a request (the lease columns are the work queue's)."""
REQUEST = f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests WHERE request_id = ?"


EVENT_COLUMNS = ("id", "seq", "type", "v", "data")
"""What ``log.stored_event`` reads from a row of the events table, besides ``at``."""
EVENTS_AFTER = (
    f"SELECT {', '.join(EVENT_COLUMNS)}, at FROM events WHERE request_id = ? AND seq > ? "
    "ORDER BY seq LIMIT ?"
)


def events_after(
    db: sqlite3.Connection, request_id: str, after: int, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` of a request's events after ``after``, in order, their columns by
    name (``at`` as a datetime): what ``log.stored_event`` reads."""
    rows = db.execute(EVENTS_AFTER, (request_id, after, limit)).fetchall()
    return [_event_columns(rest, at) for *rest, at in rows]


def _event_columns(values: Sequence[Any], at: str) -> dict[str, Any]:
    return {**dict(zip(EVENT_COLUMNS, values, strict=True)), "at": sqlite_datetime(at)}


def request(db: sqlite3.Connection, request_id: str) -> tuple[Any, ...] | None:
    """A request's read-model row in ``REQUEST_COLUMNS`` order, or None."""
    return cast(tuple[Any, ...] | None, db.execute(REQUEST, (request_id,)).fetchone())


def heads(db: sqlite3.Connection, request_ids: Sequence[str]) -> list[tuple[str, int, str]]:
    """Each request's ``(request_id, last_seq, status)``; unknown ones are left out."""
    rows = db.execute(heads_sql(len(request_ids)), tuple(request_ids)).fetchall()
    return cast(list[tuple[str, int, str]], rows)


def queued(db: sqlite3.Connection) -> int:
    """How many requests wait for a runner."""
    return int(db.execute(QUEUED).fetchone()[0])


def active(db: sqlite3.Connection, users: Sequence[str]) -> dict[str, int]:
    """Each user's queued and running requests (users with none are left out)."""
    rows = db.execute(active_sql(len(users)), (*users, *_ACTIVE)).fetchall()
    return {str(user): int(n) for user, n in rows}


def recent(
    db: sqlite3.Connection, users: Sequence[str], modes: Sequence[str], since: str
) -> list[tuple[str, str, int, str]]:
    """Per user and mode, the requests created after ``since`` (the column's stored text):
    ``(user_id, mode, how many, the oldest created_at)``."""
    rows = db.execute(recent_sql(len(users), len(modes)), (*users, *modes, since)).fetchall()
    return cast(list[tuple[str, str, int, str]], rows)


CLAIM = (
    "UPDATE requests SET lease_owner = ?, lease_expires_at = ? "
    "WHERE lease_owner IS NULL AND request_id IN ("
    "SELECT request_id FROM requests WHERE status = 'queued' AND lease_owner IS NULL "
    "ORDER BY created_at, request_id LIMIT ?) "
    "RETURNING request_id, created_at"
)
"""Lease up to so many of the oldest unclaimed queued requests (as ``queue._UNCLAIMED``)."""


def firsts_sql(n: int) -> str:
    """The statement of ``firsts`` for ``n`` requests."""
    return (
        f"SELECT request_id, {', '.join(EVENT_COLUMNS)}, at FROM events "
        f"WHERE request_id IN ({marks(n)}) AND seq = 1"
    )


def claim(db: sqlite3.Connection, owner: str, until: str, limit: int) -> list[tuple[str, str]]:
    """Lease up to ``limit`` requests to ``owner`` until ``until`` (stored text):
    ``(request_id, created_at)`` of each, oldest first."""
    rows = db.execute(CLAIM, (owner, until, limit)).fetchall()
    return sorted(((str(rid), str(created)) for rid, created in rows), key=lambda r: (r[1], r[0]))


def firsts(db: sqlite3.Connection, request_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each request's first event, its columns by name (``at`` as a datetime), by request:
    what ``log.stored_event`` reads."""
    rows = db.execute(firsts_sql(len(request_ids)), tuple(request_ids)).fetchall()
    return {str(rid): _event_columns(rest, at) for rid, *rest, at in rows}
