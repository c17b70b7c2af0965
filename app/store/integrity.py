"""Whole-log checks for operators: invariants, and the read model against the events.

``verify`` reads; ``rebuild`` recomputes every ``requests`` row from the events and, when
asked, writes the differences back (stop the service first: the writer must be idle).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby

import msgspec
from sqlalchemy import func, insert, select, update

from app.domain.events import UPCASTERS, StoredEvent, UpcasterRegistry
from app.domain.invariants import stream_problems
from app.domain.projections import RequestView, fold_request
from app.store.engine import Engines
from app.store.log import RequestRecord, record_of, stored_event
from app.store.tables import events, requests

Progress = Callable[[int, int], None]
COMPARED = (
    "status",
    "last_seq",
    "mode",
    "track_id",
    "element_id",
    "parent_request_id",
    "created_at",
    "updated_at",
)


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One problem found in the log or the read model."""

    request_id: str
    problem: str
    repaired: bool = False
    """Whether ``rebuild --repair`` fixed it (only read-model drift can be fixed)."""


async def check(
    engines: Engines,
    *,
    repair: bool = False,
    page: int = 500,
    progress: Progress | None = None,
    upcasters: UpcasterRegistry = UPCASTERS,
) -> list[Finding]:
    """Every invariant breach and every read-model drift; with ``repair``, fix the drift."""
    findings: list[Finding] = []
    async with engines.read.connect() as conn:
        total = int(await conn.scalar(select(func.count(func.distinct(events.c.request_id)))) or 0)
    done = 0
    after = ""
    while True:
        # One snapshot per page: a request's row and its events must come from the same
        # state of the log, or a commit between the two reads would look like drift.
        async with engines.snapshot() as conn:
            ids = [
                row[0]
                for row in await conn.execute(
                    select(events.c.request_id)
                    .where(events.c.request_id > after)
                    .group_by(events.c.request_id)
                    .order_by(events.c.request_id)
                    .limit(page)
                )
            ]
            if not ids:
                return findings
            rows = await conn.execute(
                select(events)
                .where(events.c.request_id.in_(ids))
                .order_by(events.c.request_id, events.c.seq)
            )
            by_request = {
                rid: [stored_event(rid, row, upcasters) for row in group]
                for rid, group in groupby(rows, key=lambda row: row.request_id)
            }
            records = {
                row.request_id: record_of(row)
                for row in await conn.execute(
                    select(requests).where(requests.c.request_id.in_(ids))
                )
            }
        for rid in ids:
            findings.extend(
                await _check_one(engines, rid, by_request[rid], records.get(rid), repair)
            )
        done += len(ids)
        after = ids[-1]
        if progress is not None:
            progress(done, total)


async def _check_one(
    engines: Engines,
    request_id: str,
    stored: list[StoredEvent],
    record: RequestRecord | None,
    repair: bool,
) -> list[Finding]:
    found = [Finding(request_id=request_id, problem=p) for p in stream_problems(stored)]
    try:
        view = fold_request(stored)
    except ValueError as exc:
        return [*found, Finding(request_id=request_id, problem=str(exc))]
    if view is None:
        return found
    if record is None:
        found.append(Finding(request_id=request_id, problem="no requests row", repaired=repair))
        if repair:
            await _insert(engines, view)
        return found
    drift = [
        f"{name}: row has {getattr(record, name)!r}, events say {getattr(view, name)!r}"
        for name in COMPARED
        if getattr(record, name) != getattr(view, name)
    ]
    if view.user_id is not None and record.user_id != view.user_id:
        drift.append(f"user_id: row has {record.user_id!r}, events say {view.user_id!r}")
    found.extend(Finding(request_id=request_id, problem=d, repaired=repair) for d in drift)
    if drift and repair:
        statement = (
            update(requests)
            .where(requests.c.request_id == request_id)
            .values(**_row(view, keep_user=record.user_id))
        )
        await engines.transact(lambda conn: conn.execute(statement))
    return found


async def _insert(engines: Engines, view: RequestView) -> None:
    statement = insert(requests).values(
        request_id=view.request_id, **_row(view, keep_user="unknown")
    )
    await engines.transact(lambda conn: conn.execute(statement))


def _row(view: RequestView, *, keep_user: str) -> dict[str, object]:
    return {
        "user_id": view.user_id or keep_user,
        "idempotency_key": view.idempotency_key,
        **{name: getattr(view, name) for name in COMPARED},
    }
