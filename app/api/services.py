"""What the controllers work with, built once by the app factory."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from litestar import Request
from litestar.datastructures import State

from app.generation.pool import RunnerPool
from app.generation.providers.base import Provider
from app.store.engine import Engines
from app.store.log import EventLog, RequestRecord
from app.store.queue import WorkQueue

LOCAL_USER = "local"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiLimits:
    """Request limits the API enforces."""

    max_prompt_chars: int
    max_context_bytes: int
    max_active_per_user: int
    sse_retry_ms: int
    sse_ping_interval_s: float
    stream_idle_timeout_s: float
    model: str


@dataclass(slots=True, kw_only=True)
class Services:
    """The running service's components."""

    provider: Provider
    engines: Engines
    log: EventLog
    queue: WorkQueue
    pool: RunnerPool
    limits: ApiLimits
    migrations_head: str | None
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    open_streams: int = 0

    def begin_shutdown(self) -> None:
        """Make every open stream end now (clients resume elsewhere or later)."""
        self.shutting_down.set()
        self.log.hub.wake_all()


def services(state: State) -> Services:
    """The services stored on the application state."""
    value = state["services"]
    assert isinstance(value, Services)
    return value


def current_user(request: Request[object, object, State]) -> str:
    """The caller's user ID (one local user until authentication is configured)."""
    return LOCAL_USER


def owned(record: RequestRecord | None, user_id: str) -> RequestRecord | None:
    """The record if it belongs to ``user_id``; another user's request does not exist."""
    if record is None or record.user_id != user_id:
        return None
    return record
