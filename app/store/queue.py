"""The durable work queue, kept in the ``requests`` table.

A request stays ``queued`` until a runner claims it by taking its lease; the lease
columns are queue mechanics, not part of the read model (the claimed runner's
``status{running}`` event is what moves the request to ``running``). Because the queue is
the table, no accepted request is lost by a restart.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from app.domain.events import utcnow
from app.store.engine import Engines
from app.store.tables import requests


class WorkQueue:
    """Claims, leases and recovery over the ``requests`` table."""

    def __init__(self, engines: Engines, *, owner: str, lease_s: float = 30.0) -> None:
        self._engines = engines
        self.owner = owner
        self._lease = timedelta(seconds=lease_s)

    async def claim(self) -> str | None:
        """Lease the oldest unclaimed queued request to this owner; None when there is none."""
        now = utcnow()
        oldest = (
            select(requests.c.request_id)
            .where(requests.c.status == "queued", requests.c.lease_owner.is_(None))
            .order_by(requests.c.created_at, requests.c.request_id)
            .limit(1)
            # PostgreSQL: nodes claiming at once each take a different row instead of
            # queueing on the same one (SQLite ignores this; it has one writer anyway).
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            update(requests)
            .where(requests.c.request_id == oldest, requests.c.lease_owner.is_(None))
            .values(lease_owner=self.owner, lease_expires_at=now + self._lease)
            .returning(requests.c.request_id)
        )
        async with self._engines.write.begin() as conn:
            claimed = (await conn.execute(statement)).scalar_one_or_none()
        return None if claimed is None else str(claimed)

    async def renew(self, request_ids: list[str]) -> None:
        """Extend this owner's leases on requests it is still running."""
        if not request_ids:
            return
        async with self._engines.write.begin() as conn:
            await conn.execute(
                update(requests)
                .where(requests.c.request_id.in_(request_ids), requests.c.lease_owner == self.owner)
                .values(lease_expires_at=utcnow() + self._lease)
            )

    async def orphaned_running(self, *, at_startup: bool = False) -> list[str]:
        """Requests marked running that no live runner holds.

        On SQLite one process owns the file, so at startup every ``running`` request was
        left behind by a process that died. With several nodes (PostgreSQL), a request is
        orphaned once its lease expired: its node stopped renewing it.
        """
        condition = requests.c.status == "running"
        if self._engines.shared or not at_startup:
            condition = condition & (requests.c.lease_expires_at < utcnow())
        async with self._engines.read.connect() as conn:
            rows = await conn.execute(
                select(requests.c.request_id).where(condition).order_by(requests.c.created_at)
            )
            return [r[0] for r in rows]

    async def release_unstarted(self, *, at_startup: bool = False) -> int:
        """Put back queued requests whose lease holder never started them."""
        condition = (requests.c.status == "queued") & requests.c.lease_owner.is_not(None)
        if self._engines.shared or not at_startup:
            condition = condition & (requests.c.lease_expires_at < utcnow())
        async with self._engines.write.begin() as conn:
            result = await conn.execute(
                update(requests).where(condition).values(lease_owner=None, lease_expires_at=None)
            )
            return result.rowcount

    async def depth(self) -> int:
        """Queued requests waiting for a runner."""
        async with self._engines.read.connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(requests).where(requests.c.status == "queued")
            )
        return int(count or 0)
