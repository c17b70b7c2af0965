"""What the controllers work with, built once by the app factory."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException

from app.api.auth import Principal, mint_token
from app.api.overload import LoadShedder
from app.domain.stats import Histogram
from app.generation.pool import RunnerPool
from app.generation.providers.base import Provider
from app.generation.runner import GenerationStats
from app.store.engine import Engines
from app.store.log import EventLog, RequestRecord
from app.store.peers import PeerLink
from app.store.queue import WorkQueue


@dataclass(slots=True)
class StreamStats:
    """SSE connections, for metrics."""

    open: int = 0
    total: int = 0
    resumes: int = 0
    durations_s: Histogram = field(
        default_factory=lambda: Histogram([1, 5, 15, 60, 300, 900, 3600])
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiLimits:
    """Request limits the API enforces."""

    max_prompt_chars: int
    max_context_bytes: int
    max_active_per_user: int
    rate_per_minute: int
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
    generation: GenerationStats
    limits: ApiLimits
    migrations_head: str | None
    shedder: LoadShedder
    jwt_secret: str = field(default="", repr=False)
    stream_token_ttl: timedelta = timedelta(minutes=10)
    peers: PeerLink | None = None
    """The other worker processes sharing this SQLite file, when there are any."""
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    streams: StreamStats = field(default_factory=lambda: StreamStats())

    def stream_link(self, request_id: str, user_id: str) -> str:
        """Where to stream a request; with auth on, it carries a token for that request only."""
        path = f"/assistant/stream/{request_id}"
        if not self.jwt_secret:
            return path
        token = mint_token(
            self.jwt_secret, user_id, ttl=self.stream_token_ttl, stream_of=request_id
        )
        return f"{path}?token={token}"

    def begin_shutdown(self) -> None:
        """Make every open stream end now (clients resume elsewhere or later)."""
        self.shutting_down.set()
        self.log.hub.wake_all()


def services(state: State) -> Services:
    """The services stored on the application state."""
    value = state["services"]
    assert isinstance(value, Services)
    return value


def principal(request: Request[Any, Any, State]) -> Principal:
    """The authenticated caller (set by the auth middleware)."""
    user = request.scope.get("user")
    assert isinstance(user, Principal)
    return user


def current_user(request: Request[Any, Any, State]) -> str:
    """The caller's user ID; a stream token, scoped to one stream, does not carry one."""
    caller = principal(request)
    if caller.stream_of is not None:
        raise NotAuthorizedException("a stream token only opens its request's stream")
    return caller.user_id


def owned(record: RequestRecord | None, user_id: str) -> RequestRecord | None:
    """The record if it belongs to ``user_id``; another user's request does not exist."""
    if record is None or record.user_id != user_id:
        return None
    return record
