"""SSE endpoints: a request's live stream (with snapshot on resume) and its paced replay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from app.api import sse
from app.api.event_stream import EventStream
from app.api.intake import owned_request
from app.api.problems import ProblemError, problem_specs
from app.api.services import Services, principal, services
from app.domain.events import format_at
from app.domain.projections import PageView, fold_page
from app.domain.replay import replay_offset
from app.store.log import RequestRecord

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

_NO_CONTENT = ResponseSpec(
    data_container=None,
    description="The client has already seen the terminal event: do not reconnect",
)

LastEventIdHeader = Annotated[
    str | None,
    Parameter(header="Last-Event-ID", required=False, description="The last seq received"),
]


class SnapshotFrame(msgspec.Struct, kw_only=True):
    """The ``snapshot`` event: the page as projected up to the resume point."""

    request_id: str
    seq: int
    type: str
    at: str
    page: PageView


class StreamController(Controller):
    """Live and resumed event streams."""

    path = "/assistant"
    tags = ["streaming"]

    @get(
        "/stream/{request_id:str}",
        summary="Stream a request's events (SSE)",
        description=(
            "Sends `retry`, then every committed event after the client's Last-Event-ID as "
            "`id: <seq>`, `event: <type>`, `data: <json>`, then closes after the terminal "
            "event. With `snapshot=1` on a resume, an `event: snapshot` frame holding the "
            "page projected up to Last-Event-ID comes first. 204 when the client has "
            "already seen the terminal event."
        ),
        media_type="text/event-stream",
        responses={204: _NO_CONTENT, **problem_specs(400, 404, 409, 410)},
    )
    async def stream(
        self,
        request: Request[Any, Any, State],
        state: State,
        request_id: str,
        last_event_id_header: LastEventIdHeader = None,
        last_event_id: Annotated[
            str | None, Parameter(query="last_event_id", required=False)
        ] = None,
        snapshot: Annotated[
            bool, Parameter(description="On a resume, first send the page so far")
        ] = False,
    ) -> Response[Any]:
        """Resume with the ``Last-Event-ID`` header or ``?last_event_id=``."""
        svc = services(state)
        record = await owned_request(svc, request_id, principal(request).user_id)
        seen = resume_point(record, last_event_id_header, last_event_id)
        if record.terminal and seen == record.last_seq:
            return Response(content=b"", status_code=204)
        lead = await snapshot_frame(svc, record.request_id, seen) if snapshot and seen else b""
        return EventStream(
            sse_body(svc, record.request_id, seen, lead=lead),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    @get(
        "/replay/{request_id:str}",
        summary="Replay stored events at their original pacing (SSE)",
        description=(
            "Re-emits the request's events with the same framing and ids as the live "
            "stream, spaced as they were committed, scaled by `speed` (2 = twice as fast, "
            "0 = no delay). `from` is the first seq replayed; a reconnecting EventSource's "
            "Last-Event-ID takes precedence."
        ),
        media_type="text/event-stream",
        responses={204: _NO_CONTENT, **problem_specs(400, 404, 409, 410)},
    )
    async def replay(
        self,
        request: Request[Any, Any, State],
        state: State,
        request_id: str,
        speed: Annotated[float, Parameter(ge=0, le=1000, description="Pace factor")] = 1.0,
        from_seq: Annotated[
            int, Parameter(query="from", ge=1, description="First seq to replay")
        ] = 1,
        last_event_id_header: LastEventIdHeader = None,
    ) -> Response[Any]:
        """The stored history, paced like the original (then the live tail, if still running)."""
        svc = services(state)
        record = await owned_request(svc, request_id, principal(request).user_id)
        if last_event_id_header:
            after = resume_point(record, last_event_id_header, None)
        else:
            after = from_seq - 1
            if after > record.last_seq:
                raise ProblemError(
                    409,
                    "from_ahead",
                    f"from={from_seq} is past the last event ({record.last_seq}) of "
                    f"request {record.request_id}",
                )
        if record.terminal and after == record.last_seq:
            return Response(content=b"", status_code=204)
        return EventStream(
            sse_body(svc, record.request_id, after, speed=speed),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )


def resume_point(record: RequestRecord, header: str | None, query: str | None) -> int:
    """The seq a client has seen (header first, then query), checked against the stream."""
    raw = header if header not in (None, "") else query
    try:
        seen = sse.parse_last_event_id(raw) or 0
    except ValueError as exc:
        raise ProblemError(400, "malformed_last_event_id", str(exc)) from None
    if seen > record.last_seq:
        raise ProblemError(
            409,
            "last_event_id_ahead",
            f"Last-Event-ID {seen} is ahead of request {record.request_id}, "
            f"which has {record.last_seq} events; resume from {record.last_seq} or less",
        )
    return seen


async def snapshot_frame(svc: Services, request_id: str, seq: int) -> bytes:
    """The ``snapshot`` frame for a resume after ``seq``; its id is that seq."""
    events = await svc.log.read(request_id, 0, seq)
    frame = SnapshotFrame(
        request_id=request_id,
        seq=seq,
        type="snapshot",
        at=format_at(events[-1].at),
        page=fold_page(request_id, events),
    )
    return sse.event_frame(seq, "snapshot", msgspec.json.encode(frame))


async def sse_body(
    svc: Services, request_id: str, after: int, *, lead: bytes = b"", speed: float = 0.0
) -> AsyncIterator[bytes]:
    """The SSE body: only committed events, each once, in order; ends after the terminal.

    ``speed > 0`` paces the events by their commit timestamps (replay).
    """
    limits = svc.limits
    stats = svc.streams
    stats.open += 1
    stats.total += 1
    stats.resumes += after > 0
    opened = time.monotonic()
    try:
        yield sse.retry_frame(limits.sse_retry_ms) + lead
        with svc.log.subscribe(request_id, after) as sub:
            last_sent = last_event = started = time.monotonic()
            first_at: datetime | None = None
            while not svc.shutting_down.is_set():
                wait = max(0.0, limits.sse_ping_interval_s - (time.monotonic() - last_sent))
                items = await sub.next(wait)
                now = time.monotonic()
                if items and speed <= 0:
                    yield b"".join(sse.event_frame(c.seq, c.type, c.envelope) for c in items)
                    last_sent = last_event = now
                elif items:
                    for item in items:
                        first_at = first_at or item.at
                        due = started + replay_offset(first_at, item.at, speed)
                        while (delay := due - time.monotonic()) > 0:
                            if not await _pause(svc, min(delay, limits.sse_ping_interval_s)):
                                return
                            if time.monotonic() - last_sent >= limits.sse_ping_interval_s:
                                yield sse.PING
                                last_sent = time.monotonic()
                        yield sse.event_frame(item.seq, item.type, item.envelope)
                        last_sent = last_event = time.monotonic()
                elif svc.shutting_down.is_set():
                    return
                elif now - last_event >= limits.stream_idle_timeout_s:
                    return  # idle too long: the client resumes with Last-Event-ID
                elif now - last_sent >= limits.sse_ping_interval_s:
                    yield sse.PING
                    last_sent = now
                if sub.finished:
                    return
    finally:
        stats.open -= 1
        stats.durations_s.observe(time.monotonic() - opened)


async def _pause(svc: Services, seconds: float) -> bool:
    """Wait ``seconds`` for a replay's pacing; False if the service began shutting down."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(svc.shutting_down.wait(), seconds)
    return not svc.shutting_down.is_set()
