"""Creating requests and reading them back: status, events, page, cancel."""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from app.api.problems import ProblemError, problem_specs
from app.api.schemas import (
    CancelOut,
    CreatedRequest,
    CreateRequestBody,
    EventPage,
    RequestStatusOut,
)
from app.api.services import Services, current_user, owned, services
from app.domain.events import (
    Cancelled,
    CancelRequested,
    Created,
    Status,
    envelope_json,
)
from app.domain.ids import is_request_id, uuid7
from app.domain.projections import PageView, fold_page
from app.store.log import (
    ActiveLimitReached,
    DuplicateRequest,
    ElementBusy,
    NewRequest,
    RequestRecord,
    StreamClosed,
)

TRACK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
ELEMENT_ID = re.compile(
    r"[A-Z][A-Za-z0-9]{0,63}-[A-Za-z0-9]{1,64}_custom_[A-Za-z][A-Za-z0-9_]{0,63}"
)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
MAX_CONTEXT_DEPTH = 32


def new_request_id() -> str:
    """A fresh UUIDv7."""
    return uuid7(time.time_ns() // 1_000_000, os.urandom(10))


def stream_url(request_id: str) -> str:
    """Where a request's SSE stream is served."""
    return f"/assistant/stream/{request_id}"


def checked_request_id(request_id: str) -> str:
    """``request_id`` if it is a UUIDv7, else a 400."""
    if not is_request_id(request_id):
        raise ProblemError(
            400,
            "malformed_request_id",
            f"{request_id!r} is not a request ID; request IDs are lower-case UUIDv7 strings "
            "as returned by POST /assistant/request",
        )
    return request_id


async def owned_request(svc: Services, request_id: str, user_id: str) -> RequestRecord:
    """The caller's request, or 404 (another user's request is reported as absent)."""
    record = owned(await svc.log.get(checked_request_id(request_id)), user_id)
    if record is None:
        raise ProblemError(404, "request_not_found", f"there is no request {request_id}")
    return record


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
        idempotency_key: Annotated[
            str | None,
            Parameter(header="Idempotency-Key", description="Replays return the same request"),
        ] = None,
    ) -> Response[CreatedRequest]:
        """Accept a request into the durable queue; 200 with the same body on a replay."""
        svc = services(state)
        user = current_user(request)
        if idempotency_key is not None:
            if IDEMPOTENCY_KEY.fullmatch(idempotency_key) is None:
                raise ProblemError(
                    400,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 printable ASCII characters",
                )
            existing = await svc.log.find_idempotent(user, idempotency_key)
            if existing is not None:
                return _created(existing, 200)
        context = _validate(data, svc)
        element_id = context.get("element_id") if data.mode == "field" else None
        new = NewRequest(
            request_id=new_request_id(),
            user_id=user,
            mode=data.mode,
            track_id=data.track_id,
            element_id=element_id if isinstance(element_id, str) else None,
            idempotency_key=idempotency_key,
            max_active=svc.limits.max_active_per_user,
        )
        position = await svc.queue.depth() + 1
        try:
            events = await svc.log.create(
                new,
                [
                    Created(
                        mode=data.mode,
                        prompt=data.prompt,
                        track_id=data.track_id,
                        context=context,
                        model=svc.limits.model,
                    ),
                    Status(
                        status="queued", message="waiting for a runner", queue_position=position
                    ),
                ],
            )
        except ActiveLimitReached as exc:
            raise ProblemError(
                429,
                "too_many_active_requests",
                f"you have {exc.limit} requests queued or running; "
                "wait for one to finish or cancel one",
                headers={"Retry-After": "5"},
            ) from None
        except ElementBusy as exc:
            active = await svc.log.get(exc.request_id)
            assert active is not None
            return _created(active, 200, status="already_processing")
        except DuplicateRequest:
            # A concurrent POST with the same Idempotency-Key won the race.
            assert idempotency_key is not None
            existing = await svc.log.find_idempotent(user, idempotency_key)
            if existing is None:
                raise
            return _created(existing, 200)
        svc.pool.notify()
        body = CreatedRequest(
            request_id=new.request_id,
            status="queued",
            stream_url=stream_url(new.request_id),
            created_at=events[0].at,
        )
        return Response(
            body, status_code=201, headers={"Location": f"/assistant/requests/{new.request_id}"}
        )

    @get(
        "/requests/{request_id:str}",
        summary="Status, and the result once terminal",
        responses=problem_specs(400, 404),
    )
    async def status(
        self, request: Request[Any, Any, State], state: State, request_id: str
    ) -> RequestStatusOut:
        """Where a request stands, for polling clients."""
        svc = services(state)
        record = await owned_request(svc, request_id, current_user(request))
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
            stream_url=stream_url(record.request_id),
            result=result,
        )

    @get(
        "/requests/{request_id:str}/events",
        summary="Events as JSON (catch-up without SSE)",
        responses=problem_specs(400, 404),
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
        responses=problem_specs(400, 404),
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
        responses=problem_specs(400, 404, 409),
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


def _created(
    record: RequestRecord, status_code: int, status: str | None = None
) -> Response[CreatedRequest]:
    body = CreatedRequest(
        request_id=record.request_id,
        status=status or record.status,
        stream_url=stream_url(record.request_id),
        created_at=record.created_at,
    )
    return Response(
        body,
        status_code=status_code,
        headers={"Location": f"/assistant/requests/{record.request_id}"},
    )


def _validate(data: CreateRequestBody, svc: Services) -> dict[str, Any]:
    limits = svc.limits
    if not data.prompt.strip():
        raise ProblemError(400, "empty_prompt", "prompt must contain some text")
    if len(data.prompt) > limits.max_prompt_chars:
        raise ProblemError(
            400,
            "prompt_too_long",
            f"prompt has {len(data.prompt)} characters; the limit is {limits.max_prompt_chars}",
        )
    if data.track_id is not None and TRACK_ID.fullmatch(data.track_id) is None:
        raise ProblemError(
            400,
            "invalid_track_id",
            "track_id must be 1 to 128 letters, digits, '_', '.', ':' or '-'",
        )
    context = data.context or {}
    if _depth(context) > MAX_CONTEXT_DEPTH:
        raise ProblemError(
            400,
            "context_too_deep",
            f"context nests deeper than {MAX_CONTEXT_DEPTH} levels; flatten it",
        )
    size = len(msgspec.json.encode(context))
    if size > limits.max_context_bytes:
        raise ProblemError(
            400,
            "context_too_large",
            f"context is {size} bytes as JSON; the limit is {limits.max_context_bytes}",
        )
    if data.mode == "field":
        element_id = context.get("element_id")
        if not isinstance(element_id, str) or ELEMENT_ID.fullmatch(element_id) is None:
            raise ProblemError(
                400,
                "invalid_element_id",
                "field mode needs context.element_id like 'HeroSection-12_custom_title' "
                "({ComponentType}-{id}_custom_{fieldName})",
            )
        if not isinstance(context.get("field"), str) or not context["field"]:
            raise ProblemError(400, "missing_field", "field mode needs context.field (a string)")
    return context


def _depth(value: object) -> int:
    """How deeply objects and arrays nest in a JSON value (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
