"""The durable work queue, kept in the ``requests`` table.

A request stays ``queued`` until a runner claims it by taking its lease; the lease
columns are queue mechanics, not part of the read model (the claimed runner's
``status{running}`` event is what moves the request to ``running``). Because the queue is
the table, no accepted request is lost by a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, func, select, update

from app.domain.events import UPCASTERS, StoredEvent, UpcasterRegistry, utcnow
from app.store import sqlite_sql
from app.store.engine import Engines, driver_of
from app.store.log import EVENT_COLUMNS, stored_event
from app.store.tables import events, requests, sqlite_text


@dataclass(frozen=True, slots=True)
class Claim:
    """A request this owner now holds the lease of, with its ``created`` event."""

    request_id: str
    created: StoredEvent | None
    """None only if the log lost it (the runner then refuses to run the request)."""


class WorkQueue:
    """Claims, leases and recovery over the ``requests`` table."""

    def __init__(
        self,
        engines: Engines,
        *,
        owner: str,
        lease_s: float = 30.0,
        upcasters: UpcasterRegistry = UPCASTERS,
    ) -> None:
        self._engines = engines
        self._upcasters = upcasters
        self.owner = owner
        self._lease = timedelta(seconds=lease_s)

    async def claim(self, limit: int = 1) -> list[Claim]:
        """Lease up to ``limit`` of the oldest unclaimed queued requests to this owner.

        One transaction for the lot, which also reads each one's ``created`` event: under
        load a dispatcher fills every free runner slot with one round trip, not one per
        request (claims share the single write connection with the group commit).

        On SQLite it first looks on a read connection for anything to claim. A write
        transaction there takes the database's write lock, which the group commit (and,
        with worker processes, every other worker) queues for, and half the claims find
        nothing: a dispatcher claims again after every claim, and every worker's
        dispatcher wakes on each new request, which one of them takes. A read takes no
        lock. (A request created just after the look wakes the dispatcher again.) The
        claim itself then runs as plain statements on the driver (``sqlite_sql``), the
        write lock held for as little Python as can be.
        """
        if not self._engines.postgres:
            if not await self._engines.query(_anything_to_claim):
                return []
            return await self._engines.transact(lambda conn: self._claim_sqlite(conn, limit))
        now = utcnow()
        picked = (
            select(requests.c.request_id)
            .where(_UNCLAIMED)
            .order_by(requests.c.created_at, requests.c.request_id)
            .limit(limit)
            # Nodes claiming at once each take different rows instead of queueing on the
            # same ones.
            .with_for_update(skip_locked=True)
            # Evaluated once: PostgreSQL may re-run an IN (subquery) while rechecking rows
            # another node changed, and so lease more than ``limit`` of them.
            .cte("picked")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        statement = (
            update(requests)
            .where(requests.c.request_id == picked.c.request_id, requests.c.lease_owner.is_(None))
            .values(lease_owner=self.owner, lease_expires_at=now + self._lease)
            .returning(requests.c.request_id, requests.c.created_at)
        )

        def claim(conn: Connection) -> list[Claim]:
            leased = sorted(conn.execute(statement).all(), key=lambda r: (r[1], r[0]))
            if not leased:
                return []
            ids = [str(r[0]) for r in leased]
            rows = conn.execute(
                select(events.c.request_id, *EVENT_COLUMNS).where(
                    events.c.request_id.in_(ids), events.c.seq == 1
                )
            )
            first = {str(row.request_id): row for row in rows}
            return [
                Claim(rid, stored_event(rid, first[rid], self._upcasters) if rid in first else None)
                for rid in ids
            ]

        return await self._engines.transact(claim)

    def _claim_sqlite(self, conn: Connection, limit: int) -> list[Claim]:
        """``claim``'s transaction as plain statements on the driver (``sqlite_sql``)."""
        db = driver_of(conn)
        until = sqlite_text(utcnow() + self._lease)
        ids = [rid for rid, _ in sqlite_sql.claim(db, self.owner, until, limit)]
        if not ids:
            return []
        first = sqlite_sql.firsts(db, ids)
        return [
            Claim(rid, stored_event(rid, first[rid], self._upcasters) if rid in first else None)
            for rid in ids
        ]

    async def renew(self, request_ids: list[str]) -> None:
        """Extend this owner's leases on requests it is still running."""
        if not request_ids:
            return
        statement = (
            update(requests)
            .where(requests.c.request_id.in_(request_ids), requests.c.lease_owner == self.owner)
            .values(lease_expires_at=utcnow() + self._lease)
        )
        await self._engines.transact(lambda conn: conn.execute(statement))

    async def orphaned_running(self, *, at_startup: bool = False) -> list[str]:
        """Requests marked running that no live runner holds.

        When one process owns the database (SQLite, one worker), at startup every
        ``running`` request was left behind by a process that died. With several nodes
        (PostgreSQL) or worker processes, a request is orphaned once its lease expired:
        its holder stopped renewing it.
        """
        condition = requests.c.status == "running"
        if self._engines.shared or not at_startup:
            condition = condition & (requests.c.lease_expires_at < utcnow())
        query = select(requests.c.request_id).where(condition).order_by(requests.c.created_at)
        rows = await self._engines.query(lambda conn: conn.execute(query).all())
        return [str(r[0]) for r in rows]

    async def release_unstarted(self, *, at_startup: bool = False) -> int:
        """Put back queued requests whose lease holder never started them."""
        condition = (requests.c.status == "queued") & requests.c.lease_owner.is_not(None)
        if self._engines.shared or not at_startup:
            condition = condition & (requests.c.lease_expires_at < utcnow())
        statement = (
            update(requests).where(condition).values(lease_owner=None, lease_expires_at=None)
        )
        return await self._engines.transact(lambda conn: conn.execute(statement).rowcount)

    async def depth(self) -> int:
        """Queued requests waiting for a runner."""
        query = select(func.count()).select_from(requests).where(requests.c.status == "queued")
        count = await self._engines.query(lambda conn: conn.scalar(query))
        return int(count or 0)


_UNCLAIMED = (requests.c.status == "queued") & requests.c.lease_owner.is_(None)
"""What a claim may take: the look on a read connection and the claim share it (on SQLite
the claim is ``sqlite_sql.CLAIM``, which states the same condition)."""
_CLAIMABLE = select(requests.c.request_id).where(_UNCLAIMED).limit(1)


def _anything_to_claim(conn: Connection) -> bool:
    return conn.execute(_CLAIMABLE).first() is not None
