"""History queries over the whole log: events and requests by filter, and the raw facts
that ``/audit/stats`` summarises. Each filter column has an index (migration 0004)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import Select, func, select, tuple_

from app.domain.events import UPCASTERS, StoredEvent, UpcasterRegistry
from app.store.engine import Engines
from app.store.log import RequestRecord, aware_utc, record_of, stored_event
from app.store.tables import events, requests

CONTENT_TYPES = ("response_chunk", "content_block_start", "content_block_delta", "action")


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of ``/audit/events``; ``after_id`` is the cursor (the global position)."""

    user_id: str | None = None
    request_id: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_id: int = 0
    limit: int = 500


class RequestQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of ``/audit/requests``; ``after`` (a returned request ID) is the cursor."""

    user_id: str | None = None
    status: str | None = None
    mode: str | None = None
    track_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: str | None = None
    limit: int = 100


class AuditedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event with the user whose request it belongs to."""

    event: StoredEvent
    user_id: str


class StatsFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the stats are computed from, for the requests in a time window."""

    by_status: dict[str, int]
    by_mode: dict[str, int]
    error_codes: list[str]
    durations_ms: list[float]
    first_chunk_ms: list[float]
    tokens: list[int]
    events_per_request: list[int]


def events_select(query: EventQuery) -> Select[Any]:
    """The SELECT behind ``audit_events`` (exposed so tests can read its query plan)."""
    statement = (
        select(events, requests.c.user_id)
        .join(requests, requests.c.request_id == events.c.request_id)
        .where(events.c.id > query.after_id)
        .order_by(events.c.id)
        .limit(query.limit)
    )
    if query.user_id is not None:
        statement = statement.where(requests.c.user_id == query.user_id)
    if query.request_id is not None:
        statement = statement.where(events.c.request_id == query.request_id)
    if query.type is not None:
        statement = statement.where(events.c.type == query.type)
    if query.since is not None:
        statement = statement.where(events.c.at >= query.since)
    if query.until is not None:
        statement = statement.where(events.c.at < query.until)
    return statement


def requests_select(query: RequestQuery) -> Select[Any]:
    """The SELECT behind ``audit_requests``: oldest first, by creation time then ID."""
    statement = (
        select(requests).order_by(requests.c.created_at, requests.c.request_id).limit(query.limit)
    )
    for column, value in [
        (requests.c.user_id, query.user_id),
        (requests.c.status, query.status),
        (requests.c.mode, query.mode),
        (requests.c.track_id, query.track_id),
    ]:
        if value is not None:
            statement = statement.where(column == value)
    if query.since is not None:
        statement = statement.where(requests.c.created_at >= query.since)
    if query.until is not None:
        statement = statement.where(requests.c.created_at < query.until)
    if query.after is not None:
        cursor = (
            select(requests.c.created_at)
            .where(requests.c.request_id == query.after)
            .scalar_subquery()
        )
        statement = statement.where(
            tuple_(requests.c.created_at, requests.c.request_id) > tuple_(cursor, query.after)
        )
    return statement


async def audit_events(
    engines: Engines, query: EventQuery, upcasters: UpcasterRegistry = UPCASTERS
) -> list[AuditedEvent]:
    """One page of events matching ``query``, in log order."""
    async with engines.read.connect() as conn:
        rows = (await conn.execute(events_select(query))).all()
    return [
        AuditedEvent(event=stored_event(row.request_id, row, upcasters), user_id=row.user_id)
        for row in rows
    ]


async def all_events(
    engines: Engines, query: EventQuery, *, page: int = 1_000
) -> AsyncIterator[AuditedEvent]:
    """Every event matching ``query``, page by page (for exports)."""
    after = query.after_id
    while True:
        batch = await audit_events(
            engines, msgspec.structs.replace(query, after_id=after, limit=page)
        )
        for item in batch:
            yield item
        if len(batch) < page:
            return
        after = batch[-1].event.id


async def audit_requests(engines: Engines, query: RequestQuery) -> list[RequestRecord]:
    """One page of requests matching ``query``, oldest first."""
    async with engines.read.connect() as conn:
        rows = (await conn.execute(requests_select(query))).all()
    return [record_of(row) for row in rows]


async def stats_facts(
    engines: Engines,
    *,
    user_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> StatsFacts:
    """The raw facts for the requests created in ``[since, until)`` (of one user, if given)."""
    scope = select(requests.c.request_id)
    if user_id is not None:
        scope = scope.where(requests.c.user_id == user_id)
    if since is not None:
        scope = scope.where(requests.c.created_at >= since)
    if until is not None:
        scope = scope.where(requests.c.created_at < until)
    chosen = scope.subquery()
    in_scope = requests.c.request_id.in_(select(chosen.c.request_id))
    async with engines.snapshot() as conn:
        rows = (
            await conn.execute(
                select(
                    requests.c.request_id,
                    requests.c.status,
                    requests.c.mode,
                    requests.c.last_seq,
                    requests.c.created_at,
                    requests.c.updated_at,
                ).where(in_scope)
            )
        ).all()
        first_chunk = {
            str(r.request_id): r.first_at
            for r in await conn.execute(
                select(events.c.request_id, func.min(events.c.at).label("first_at"))
                .where(events.c.request_id.in_(select(chosen.c.request_id)))
                .where(events.c.type.in_(CONTENT_TYPES))
                .group_by(events.c.request_id)
            )
        }
        endings = (
            await conn.execute(
                select(events.c.type, events.c.data)
                .where(events.c.request_id.in_(select(chosen.c.request_id)))
                .where(events.c.type.in_(["complete", "error"]))
            )
        ).all()
    by_status: dict[str, int] = {}
    by_mode: dict[str, int] = {}
    durations: list[float] = []
    first_chunk_ms: list[float] = []
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
        by_mode[row.mode] = by_mode.get(row.mode, 0) + 1
        if row.status in ("completed", "failed", "cancelled"):
            durations.append((row.updated_at - row.created_at).total_seconds() * 1000)
        if (first := first_chunk.get(str(row.request_id))) is not None:
            first_chunk_ms.append((aware_utc(first) - row.created_at).total_seconds() * 1000)
    error_codes: list[str] = []
    tokens: list[int] = []
    for ending in endings:
        data = msgspec.json.decode(ending.data)
        if ending.type == "error":
            error_codes.append(str(data.get("code", "unknown")))
        else:
            tokens.append(int(data.get("usage", {}).get("total_tokens", 0)))
    return StatsFacts(
        by_status=by_status,
        by_mode=by_mode,
        error_codes=error_codes,
        durations_ms=durations,
        first_chunk_ms=first_chunk_ms,
        tokens=tokens,
        events_per_request=[int(r.last_seq) for r in rows],
    )
