"""Accepting requests: validation, limits, idempotency, and the first events."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import msgspec
from litestar import Response

from app.api.problems import ProblemError
from app.api.schemas import CreatedRequest, CreateRequestBody
from app.api.services import Services, owned
from app.domain.events import Created, Status
from app.domain.ids import is_request_id, uuid7
from app.logcontext import request_id_var
from app.store.log import (
    ActiveLimitReached,
    DuplicateRequest,
    ElementBusy,
    NewRequest,
    RateLimited,
    RequestRecord,
)
from app.store.retention import purged_owner

TRACK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
ELEMENT_ID = re.compile(
    r"[A-Z][A-Za-z0-9]{0,63}-[A-Za-z0-9]{1,64}_custom_[A-Za-z][A-Za-z0-9_]{0,63}"
)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
MAX_CONTEXT_DEPTH = 32


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of accepting a request: a new one (201) or an existing one (200)."""

    request_id: str
    status: str
    created_at: Any
    status_code: int
    stream_url: str

    def response(self) -> Response[CreatedRequest]:
        """The HTTP answer: the request, its stream URL and its Location."""
        body = CreatedRequest(
            request_id=self.request_id,
            status=self.status,
            stream_url=self.stream_url,
            created_at=self.created_at,
        )
        return Response(
            body,
            status_code=self.status_code,
            headers={"Location": f"/assistant/requests/{self.request_id}"},
        )


def new_request_id() -> str:
    """A fresh UUIDv7."""
    return uuid7(time.time_ns() // 1_000_000, os.urandom(10))


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


def checked_idempotency_key(key: str | None) -> str | None:
    """The Idempotency-Key header if well formed, else a 400."""
    if key is not None and IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise ProblemError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )
    return key


async def accept(
    svc: Services,
    user: str,
    body: CreateRequestBody,
    *,
    idempotency_key: str | None = None,
    model: str | None = None,
    parent_request_id: str | None = None,
) -> Accepted:
    """Validate ``body`` and queue it; replays and busy field elements return the existing."""
    key = checked_idempotency_key(idempotency_key)
    request_id_var.set(None)
    if key is not None and (existing := await svc.log.find_idempotent(user, key)) is not None:
        return _existing(svc, existing)
    context = validated_context(body, svc)
    element_id = context.get("element_id") if body.mode == "field" else None
    new = NewRequest(
        request_id=new_request_id(),
        user_id=user,
        mode=body.mode,
        track_id=body.track_id,
        element_id=element_id if isinstance(element_id, str) else None,
        idempotency_key=key,
        parent_request_id=parent_request_id,
        max_active=svc.limits.max_active_per_user,
        max_per_minute=svc.limits.rate_per_minute,
    )
    try:
        events = await svc.log.create(
            new,
            [
                Created(
                    mode=body.mode,
                    prompt=body.prompt,
                    track_id=body.track_id,
                    context=context,
                    model=model or svc.limits.model,
                    parent_request_id=parent_request_id,
                    user_id=user,
                    idempotency_key=key,
                ),
                # The log fills in queue_position when it commits the request.
                Status(status="queued", message="waiting for a runner"),
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
    except RateLimited as exc:
        raise ProblemError(
            429,
            "too_many_new_requests",
            f"you created {exc.limit} {body.mode} requests in the last minute; "
            f"try again in {exc.retry_after_s} s",
            headers={
                "Retry-After": str(exc.retry_after_s),
                "RateLimit-Policy": f"{exc.limit};w=60",
                "RateLimit-Limit": str(exc.limit),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(exc.retry_after_s),
            },
        ) from None
    except ElementBusy as exc:
        active = await svc.log.get(exc.request_id)
        assert active is not None
        return _existing(svc, active, status="already_processing")
    except DuplicateRequest:
        # A concurrent request with the same Idempotency-Key won the race.
        existing = await svc.log.find_idempotent(user, key) if key else None
        if existing is None:
            raise
        return _existing(svc, existing)
    svc.pool.notify()
    request_id_var.set(new.request_id)
    return Accepted(
        request_id=new.request_id,
        status="queued",
        created_at=events[0].at,
        status_code=201,
        stream_url=svc.stream_link(new.request_id, user),
    )


def _existing(svc: Services, record: RequestRecord, status: str | None = None) -> Accepted:
    return Accepted(
        request_id=record.request_id,
        status=status or record.status,
        created_at=record.created_at,
        status_code=200,
        stream_url=svc.stream_link(record.request_id, record.user_id),
    )


def validated_context(data: CreateRequestBody, svc: Services) -> dict[str, Any]:
    """The request's context, after every input rule of DESIGN section 7 passed."""
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


async def owned_request(svc: Services, request_id: str, user_id: str) -> RequestRecord:
    """The caller's request: 404 if absent or someone else's, 410 if retention purged it."""
    request_id_var.set(request_id)
    record = owned(await svc.log.get(checked_request_id(request_id)), user_id)
    if record is not None:
        return record
    if await purged_owner(svc.engines, request_id) == user_id:
        raise ProblemError(
            410,
            "request_purged",
            f"request {request_id} ended long enough ago that retention deleted its events",
        )
    raise ProblemError(404, "request_not_found", f"there is no request {request_id}")
