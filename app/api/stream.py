"""``GET /assistant/stream/{request_id}``: a request's events over SSE, from the log."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from app.api import sse
from app.api.problems import ProblemError, problem_specs
from app.api.requests import owned_request
from app.api.services import Services, current_user, services

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


class StreamController(Controller):
    """Live and resumed event streams."""

    path = "/assistant/stream"
    tags = ["streaming"]

    @get(
        "/{request_id:str}",
        summary="Stream a request's events (SSE)",
        description=(
            "Sends `retry`, then every committed event after the client's Last-Event-ID as "
            "`id: <seq>`, `event: <type>`, `data: <json>`, then closes after the terminal "
            "event. 204 when the client has already seen the terminal event."
        ),
        media_type="text/event-stream",
        responses={
            204: ResponseSpec(
                data_container=None,
                description="The client has already seen the terminal event: do not reconnect",
            ),
            **problem_specs(400, 404, 409),
        },
    )
    async def stream(
        self,
        request: Request[Any, Any, State],
        state: State,
        request_id: str,
        last_event_id_header: Annotated[
            str | None, Parameter(header="Last-Event-ID", required=False)
        ] = None,
        last_event_id: Annotated[
            str | None, Parameter(query="last_event_id", required=False)
        ] = None,
    ) -> Response[Any]:
        """Resume with the ``Last-Event-ID`` header or ``?last_event_id=``."""
        svc = services(state)
        record = await owned_request(svc, request_id, current_user(request))
        raw = last_event_id_header if last_event_id_header not in (None, "") else last_event_id
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
        if record.terminal and seen == record.last_seq:
            return Response(content=b"", status_code=204)
        return Stream(
            _events(svc, record.request_id, seen),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )


async def _events(svc: Services, request_id: str, after: int) -> AsyncIterator[bytes]:
    """The SSE body: only committed events, each once, in order; ends after the terminal."""
    limits = svc.limits
    svc.open_streams += 1
    try:
        yield sse.retry_frame(limits.sse_retry_ms)
        with svc.log.subscribe(request_id, after) as sub:
            last_sent = last_event = time.monotonic()
            while not svc.shutting_down.is_set():
                wait = max(0.0, limits.sse_ping_interval_s - (time.monotonic() - last_sent))
                items = await sub.next(wait)
                now = time.monotonic()
                if items:
                    yield b"".join(
                        sse.event_frame(c.event.seq, c.event.type, c.envelope) for c in items
                    )
                    last_sent = last_event = now
                    if sub.finished:
                        return
                elif svc.shutting_down.is_set():
                    return
                elif now - last_event >= limits.stream_idle_timeout_s:
                    return  # idle too long: the client resumes with Last-Event-ID
                elif now - last_sent >= limits.sse_ping_interval_s:
                    yield sse.PING
                    last_sent = now
    finally:
        svc.open_streams -= 1
