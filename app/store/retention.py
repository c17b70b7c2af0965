"""Retention: whole finished requests older than a cutoff leave the log, tombstones stay.

This is the one place events are ever deleted (DESIGN section 2, invariant 1), and only
whole requests that have ended, so no stream is cut short.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, insert, select

from app.domain.events import TERMINAL_STATUSES, utcnow
from app.store.engine import Engines
from app.store.tables import events, purged_requests, requests


async def purge_ended_before(engines: Engines, cutoff: datetime, *, batch: int = 50) -> int:
    """Delete requests that ended before ``cutoff``, with their events; returns how many.

    In small transactions: they share the one write connection with the group commit,
    which waits behind each of them (and a long wait would read as saturation).
    """

    def purge_one_batch(conn: Connection) -> int:
        rows = conn.execute(
            select(requests.c.request_id, requests.c.user_id)
            .where(requests.c.status.in_(TERMINAL_STATUSES), requests.c.updated_at < cutoff)
            .limit(batch)
        ).all()
        if not rows:
            return 0
        ids = [row.request_id for row in rows]
        now = utcnow()
        conn.execute(
            insert(purged_requests),
            [{"request_id": r.request_id, "user_id": r.user_id, "purged_at": now} for r in rows],
        )
        conn.execute(delete(events).where(events.c.request_id.in_(ids)))
        conn.execute(delete(requests).where(requests.c.request_id.in_(ids)))
        return len(rows)

    total = 0
    while purged := await engines.transact(purge_one_batch):
        total += purged
    return total


async def purged_owner(engines: Engines, request_id: str) -> str | None:
    """The user whose request ``request_id`` retention removed, if it did."""
    async with engines.read.connect() as conn:
        owner = await conn.scalar(
            select(purged_requests.c.user_id).where(purged_requests.c.request_id == request_id)
        )
    return None if owner is None else str(owner)
