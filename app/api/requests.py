"""Creating requests and reading them back: status, events, page, cancel."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from app.api.audit import AuditRequests, StatusName, list_requests, utc
from app.api.event_stream import EventStream
from app.api.intake import accept, owned_request
from app.api.problems import ProblemError, problem_specs
from app.api.schemas import (
    CancelOut,
    CreatedRequest,
    CreateRequestBody,
    EventPage,
    RegenerateBody,
    RequestStatusOut,
)
from app.api.services import Services, current_user, services
from app.api.stream import SSE_HEADERS, sse_body
from app.domain.events import (
    Cancelled,
    CancelRequested,
    Created,
    envelope_json,
)
from app.domain.projections import PageView, fold_page
from app.store.audit import RequestQuery
from app.store.log import (
    RequestRecord,
    StreamClosed,
)

IdempotencyKey = Annotated[
    str | None,
    Parameter(header="Idempotency-Key", description="Replays return the same request"),
]


class RequestController(Controller):
    """``/assistant``: the request lifecycle."""

    path = "/assistant"
    tags = ["requests"]

    @post(
        "/request",
        status_code=201,
        summary="Queue a generation",
        responses={
            200: ResponseSpec(
                data_container=CreatedRequest,
                description="Idempotent replay, or the element's field job already running",
            ),
            **problem_specs(400, 413, 429),
        },
    )
    async def create(
        self,
        request: Request[Any, Any, State],
        state: State,
        data: CreateRequestBody,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[CreatedRequest]:
        """Accept a request into the durable queue; 200 with the same body on a replay."""
        accepted = await accept(
            services(state), current_user(request), data, idempotency_key=idempotency_key
        )
        return accepted.response()

    @get(
        "/requests",
        summary="The caller's requests, filtered, oldest first",
        responses=problem_specs(400),
    )
    async def list_mine(
        self,
        request: Request[Any, Any, State],
        state: State,
        status: StatusName | None = None,
        mode: str | None = None,
        track_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: Annotated[str | None, Parameter(description="next_after of the last page")] = None,
        limit: Annotated[int, Parameter(ge=1, le=1_000)] = 100,
    ) -> AuditRequests:
        """Pages of the caller's own requests (another user's never appear)."""
        query = RequestQuery(
            user_id=current_user(request),
            status=status,
            mode=mode,
            track_id=track_id,
            since=utc(since),
            until=utc(until),
            after=after,
            limit=limit,
        )
        return await list_requests(services(state), query)

    @get(
        "/requests/{request_id:str}",
        summary="Status, and the result once terminal",
        responses=problem_specs(400, 404, 410),
    )
    async def status(
        self, request: Request[Any, Any, State], state: State, request_id: str
    ) -> RequestStatusOut:
        """Where a request stands, for polling clients."""
        svc = services(state)
        record = await owned_request(svc, request_id, current_user(request))
        return await status_body(svc, record)

    @post(
        "/generate",
        status_code=200,
        summary="One shot: create and stream (SSE) or wait for the result (JSON)",
        description=(
            "With `Accept: text/event-stream` the response is the request's SSE stream, with "
            "the usual ids, so it can be resumed on /assistant/stream/{request_id}. "
            "Otherwise the call waits for the terminal event and returns the final status. "
            "Either way a disconnect does not cancel the generation."
        ),
        responses={
            200: ResponseSpec(
                data_container=RequestStatusOut,
                description="The finished request (or its SSE stream)",
            ),
            **problem_specs(400, 413, 429),
        },
    )
    async def generate(
        self,
        request: Request[Any, Any, State],
        state: State,
        data: CreateRequestBody,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Any]:
        """Create a request and follow it in the same response."""
        svc = services(state)
        accepted = await accept(svc, current_user(request), data, idempotency_key=idempotency_key)
        headers = {"Location": f"/assistant/requests/{accepted.request_id}"}
        if "text/event-stream" in request.headers.get("accept", ""):
            return EventStream(
                sse_body(svc, accepted.request_id, 0),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
            )
        with svc.log.subscribe(accepted.request_id, 0) as sub:
            while not sub.finished and not svc.shutting_down.is_set():
                await sub.next(svc.limits.sse_ping_interval_s)
        record = await svc.log.get(accepted.request_id)
        assert record is not None
        return Response(await status_body(svc, record), headers=headers)

    @post(
        "/requests/{request_id:str}/regenerate",
        status_code=201,
        summary="Run a request again with the same inputs",
        responses={
            200: ResponseSpec(data_container=CreatedRequest, description="Idempotent replay"),
            **problem_specs(400, 404, 410, 413, 429),
        },
    )
    async def regenerate(
        self,
        request: Request[Any, Any, State],
        state: State,
        request_id: str,
        data: RegenerateBody | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[CreatedRequest]:
        """A new request with the original's inputs (prompt and model may be overridden)."""
        svc = services(state)
        user = current_user(request)
        record = await owned_request(svc, request_id, user)
        (first,) = await svc.log.read(record.request_id, 0, 1)
        original = first.payload()
        assert isinstance(original, Created)
        overrides = data or RegenerateBody()
        body = CreateRequestBody(
            prompt=original.prompt if overrides.prompt is None else overrides.prompt,
            mode=original.mode,
            track_id=original.track_id,
            context=original.context,
        )
        accepted = await accept(
            svc,
            user,
            body,
            idempotency_key=idempotency_key,
            model=overrides.model or original.model,
            parent_request_id=record.request_id,
        )
        return accepted.response()

    @get(
        "/requests/{request_id:str}/events",
        summary="Events as JSON (catch-up without SSE)",
        responses=problem_specs(400, 404, 410),
    )
    async def events(
        self,
        request: Request[Any, Any, State],
        state: State,
        request_id: str,
        after: Annotated[int, Parameter(ge=0, description="Return events with seq > after")] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 500,
    ) -> EventPage:
        """Committed events after ``after``, at most ``limit``."""
        svc = services(state)
        record = await owned_request(svc, request_id, current_user(request))
        rows = await svc.log.read(record.request_id, after, limit)
        return EventPage(
            request_id=record.request_id,
            events=[msgspec.json.decode(envelope_json(e)) for e in rows],
            last_seq=record.last_seq,
            terminal=bool(rows) and rows[-1].terminal,
        )

    @get(
        "/requests/{request_id:str}/page",
        summary="The page projected from events",
        responses=problem_specs(400, 404, 410),
    )
    async def page(
        self,
        request: Request[Any, Any, State],
        state: State,
        request_id: str,
        at: Annotated[
            int | None, Parameter(ge=0, description="Project events up to this seq")
        ] = None,
    ) -> PageView:
        """The generated page as it stood at seq ``at`` (default: now)."""
        svc = services(state)
        record = await owned_request(svc, request_id, current_user(request))
        upto = record.last_seq if at is None else min(at, record.last_seq)
        rows = await svc.log.read(record.request_id, 0, upto)
        return fold_page(record.request_id, rows)

    @post(
        "/requests/{request_id:str}/cancel",
        status_code=200,
        summary="Cancel a request",
        responses=problem_specs(400, 404, 409, 410),
    )
    async def cancel(
        self, request: Request[Any, Any, State], state: State, request_id: str
    ) -> CancelOut:
        """Idempotent: ends the request in ``cancelled``; 409 once it has completed or failed."""
        svc = services(state)
        user = current_user(request)
        record = await owned_request(svc, request_id, user)
        if not record.terminal:
            reason = f"cancelled by {user}"
            with contextlib.suppress(StreamClosed):
                if record.status == "running":
                    await svc.log.append(record.request_id, [CancelRequested(by=user)])
                # Stop the runner if this process has one; it writes `cancelled` itself.
                await svc.pool.cancel(record.request_id, reason)
                # Otherwise (still queued, a runner that never got going, or one in another
                # process) ending the stream here stops whoever holds it at its next append.
                # If the request ended meanwhile, the log refuses this with StreamClosed.
                await svc.log.append(record.request_id, [Cancelled(reason=reason)])
            record = await owned_request(svc, request_id, user)
        if record.status != "cancelled":
            raise ProblemError(
                409,
                "already_finished",
                f"request {record.request_id} already ended as {record.status}; "
                "there is nothing to cancel",
            )
        return CancelOut(request_id=record.request_id, status=record.status)


async def status_body(svc: Services, record: RequestRecord) -> RequestStatusOut:
    """A request's status, with its terminal event once it has one."""
    result: dict[str, Any] | None = None
    if record.terminal:
        (last,) = await svc.log.read(record.request_id, record.last_seq - 1, 1)
        result = msgspec.json.decode(envelope_json(last))
    return RequestStatusOut(
        request_id=record.request_id,
        mode=record.mode,
        status=record.status,
        track_id=record.track_id,
        last_seq=record.last_seq,
        created_at=record.created_at,
        updated_at=record.updated_at,
        stream_url=svc.stream_link(record.request_id, record.user_id),
        parent_request_id=record.parent_request_id,
        result=result,
    )
