"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

ModeName = Literal["generate", "edit", "chat", "field"]


class CreateRequestBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to generate."""

    prompt: str
    mode: ModeName = "generate"
    track_id: str | None = None
    context: dict[str, Any] | None = None


class RegenerateBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Overrides for a regeneration; everything else is taken from the original request."""

    prompt: str | None = None
    model: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/-]{1,128}$")] | None = None


class CreatedRequest(msgspec.Struct, kw_only=True):
    """A request accepted into the queue (or the one an idempotent replay refers to)."""

    request_id: str
    status: str
    stream_url: str
    created_at: datetime


class RequestStatusOut(msgspec.Struct, kw_only=True):
    """Where a request stands; ``result`` is its terminal event once it has one."""

    request_id: str
    mode: str
    status: str
    track_id: str | None
    last_seq: int
    created_at: datetime
    updated_at: datetime
    stream_url: str
    parent_request_id: str | None = None
    result: dict[str, Any] | None = None


class EventPage(msgspec.Struct, kw_only=True):
    """Committed events after a seq, as the stream would send them."""

    request_id: str
    events: list[dict[str, Any]]
    last_seq: int
    terminal: bool


class CancelOut(msgspec.Struct, kw_only=True):
    """The state of a request after a cancel."""

    request_id: str
    status: str


class Health(msgspec.Struct, kw_only=True):
    """Liveness or readiness."""

    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)
    node: str | None = None
