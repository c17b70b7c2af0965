"""``/audit``: the history, from the same log. Users see their own; admins see everyone's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.response import Stream

from app.api.problems import ProblemError, problem_specs
from app.api.services import Services, current_user, principal, services
from app.domain.events import MODES, PAYLOAD_TYPES, envelope_json
from app.domain.stats import Distribution, distribution
from app.store.audit import (
    AuditedEvent,
    EventQuery,
    RequestQuery,
    all_events,
    audit_events,
    audit_requests,
    stats_facts,
)

NDJSON = "application/x-ndjson"
StatusName = Literal["queued", "running", "completed", "failed", "cancelled"]


class AuditEvents(msgspec.Struct, kw_only=True):
    """A page of events; pass ``next_after_id`` as ``after_id`` for the next page."""

    events: list[dict[str, Any]]
    next_after_id: int | None


class AuditedRequest(msgspec.Struct, kw_only=True):
    """One request's read-model row."""

    request_id: str
    user_id: str
    mode: str
    status: str
    track_id: str | None
    element_id: str | None
    parent_request_id: str | None
    last_seq: int
    created_at: datetime
    updated_at: datetime


class AuditRequests(msgspec.Struct, kw_only=True):
    """A page of requests; pass ``next_after`` as ``after`` for the next page."""

    requests: list[AuditedRequest]
    next_after: str | None


class TokenTotals(msgspec.Struct, kw_only=True):
    """Model tokens of completed requests."""

    total: int
    per_request: Distribution


class AuditStats(msgspec.Struct, kw_only=True):
    """Counts and distributions over the requests created in the window."""

    requests: int
    by_status: dict[str, int]
    by_mode: dict[str, int]
    errors_by_code: dict[str, int]
    duration_ms: Distribution
    time_to_first_chunk_ms: Distribution
    tokens: TokenTotals
    events_per_request: Distribution


def utc(value: datetime | None) -> datetime | None:
    """A query timestamp; one given without an offset is taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def scope_user(request: Request[Any, Any, State], user_id: str | None) -> str | None:
    """Whose history the caller may read: admins anyone's (or all), users only their own."""
    caller = current_user(request)
    return user_id if principal(request).admin else caller


def audited(item: AuditedEvent) -> dict[str, Any]:
    """An event as the stream sends it, plus its global position and its user."""
    body: dict[str, Any] = msgspec.json.decode(envelope_json(item.event))
    return {"id": item.event.id, "user_id": item.user_id, **body}


class AuditController(Controller):
    """History queries."""

    path = "/audit"
    tags = ["audit"]

    @get(
        "/events",
        summary="Events by request, user, type and time; JSON pages or NDJSON export",
        description=f"With `Accept: {NDJSON}` every matching event after `after_id` is "
        "streamed as one JSON object per line (`limit` is ignored).",
        responses=problem_specs(400),
    )
    async def events(
        self,
        request: Request[Any, Any, State],
        state: State,
        request_id: str | None = None,
        user_id: str | None = None,
        event_type: Annotated[str | None, Parameter(query="type")] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: Annotated[int, Parameter(ge=0)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=10_000)] = 500,
    ) -> Response[Any]:
        """The log, filtered, in global order."""
        svc = services(state)
        if event_type is not None and event_type not in PAYLOAD_TYPES:
            raise ProblemError(
                400,
                "unknown_event_type",
                f"type must be one of: {', '.join(sorted(PAYLOAD_TYPES))}",
            )
        query = EventQuery(
            user_id=scope_user(request, user_id),
            request_id=request_id,
            type=event_type,
            since=utc(since),
            until=utc(until),
            after_id=after_id,
            limit=limit,
        )
        if NDJSON in request.headers.get("accept", ""):
            return Stream(_ndjson(svc, query), media_type=NDJSON)
        page = await audit_events(svc.engines, query)
        return Response(
            AuditEvents(
                events=[audited(item) for item in page],
                next_after_id=page[-1].event.id if len(page) == limit else None,
            )
        )

    @get(
        "/requests",
        summary="Requests by user, status, mode, track and creation time",
        responses=problem_specs(400),
    )
    async def requests(
        self,
        request: Request[Any, Any, State],
        state: State,
        user_id: str | None = None,
        status: StatusName | None = None,
        mode: Annotated[str | None, Parameter(description=f"One of {', '.join(MODES)}")] = None,
        track_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1_000)] = 100,
    ) -> AuditRequests:
        """The ``requests`` read model, filtered, oldest first."""
        query = RequestQuery(
            user_id=scope_user(request, user_id),
            status=status,
            mode=mode,
            track_id=track_id,
            since=utc(since),
            until=utc(until),
            after=after,
            limit=limit,
        )
        return await list_requests(services(state), query)

    @get("/stats", summary="Counts, durations, time to first chunk, tokens, events")
    async def stats(
        self,
        request: Request[Any, Any, State],
        state: State,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AuditStats:
        """Statistics over the requests created in ``[since, until)``."""
        facts = await stats_facts(
            services(state).engines,
            user_id=scope_user(request, user_id),
            since=utc(since),
            until=utc(until),
        )
        errors: dict[str, int] = {}
        for code in facts.error_codes:
            errors[code] = errors.get(code, 0) + 1
        return AuditStats(
            requests=sum(facts.by_status.values()),
            by_status=facts.by_status,
            by_mode=facts.by_mode,
            errors_by_code=errors,
            duration_ms=distribution(facts.durations_ms),
            time_to_first_chunk_ms=distribution(facts.first_chunk_ms),
            tokens=TokenTotals(total=sum(facts.tokens), per_request=distribution(facts.tokens)),
            events_per_request=distribution(facts.events_per_request),
        )


async def _ndjson(svc: Services, query: EventQuery) -> AsyncIterator[bytes]:
    async for item in all_events(svc.engines, query):
        yield msgspec.json.encode(audited(item)) + b"\n"


async def list_requests(svc: Services, query: RequestQuery) -> AuditRequests:
    """One page of the read model for ``query`` (shared with ``GET /assistant/requests``)."""
    if query.mode is not None and query.mode not in MODES:
        raise ProblemError(400, "unknown_mode", f"mode must be one of: {', '.join(MODES)}")
    records = await audit_requests(svc.engines, query)
    return AuditRequests(
        requests=[
            AuditedRequest(
                request_id=r.request_id,
                user_id=r.user_id,
                mode=r.mode,
                status=r.status,
                track_id=r.track_id,
                element_id=r.element_id,
                parent_request_id=r.parent_request_id,
                last_seq=r.last_seq,
                created_at=r.created_at,
                updated_at=r.updated_at,
            )
            for r in records
        ],
        next_after=records[-1].request_id if len(records) == query.limit else None,
    )
