"""A small async Python client for genstream: request, stream with resume, cancel.

It needs only httpx and msgspec. ``stream_assistant_response`` resumes by itself: when a
connection drops it reconnects with ``Last-Event-ID`` after an exponential backoff (never
shorter than the server's ``retry:``), so the caller sees every event once, in order, up
to the terminal one::

    handle = await request_assistant("http://127.0.0.1:8000", "a page for a bakery")
    async for event in stream_assistant_response("http://127.0.0.1:8000", handle):
        print(event.seq, event.type, event.data)

Errors are ``GenstreamError`` with the problem details' ``status``, ``code`` and ``detail``
(``status`` is None when the server gave no HTTP answer at all). POSTs are never retried
by the client; pass an ``idempotency_key`` and call again to retry one safely.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import msgspec

TERMINAL_TYPES = frozenset({"complete", "error", "cancelled"})
_OUTCOME = {"complete": "completed", "error": "failed", "cancelled": "cancelled"}


class GenstreamError(Exception):
    """A call failed: an HTTP problem, or no usable answer at all (``status`` is None)."""

    def __init__(
        self,
        status: int | None,
        code: str,
        detail: str,
        *,
        problem: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}" if status is None else f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later: no answer, 429, or a server error."""
        return self.status is None or self.status == 429 or self.status >= 500


class RequestHandle(msgspec.Struct, frozen=True, kw_only=True):
    """An accepted request: what ``POST /assistant/request`` answered."""

    request_id: str
    status: str
    """``queued`` when new; on a 200 its current status or ``already_processing``."""
    stream_url: str
    """Path of its stream; carries ``?token=`` scoped to this request when auth is on."""
    created_at: str
    new: bool = True
    """False for an idempotent replay or a field job that was already running (HTTP 200)."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a request's log, as streamed."""

    request_id: str
    seq: int
    """1-based, dense position within the request."""
    type: str
    at: str
    """Commit time, RFC 3339 UTC with microseconds."""
    data: dict[str, Any]
    """The payload fields of the event type (everything but the four above)."""

    @property
    def terminal(self) -> bool:
        """Whether this event ends the request's stream."""
        return self.type in TERMINAL_TYPES

    def to_json(self) -> dict[str, Any]:
        """The event's JSON object exactly as the server sends it."""
        return {
            "request_id": self.request_id,
            "seq": self.seq,
            "type": self.type,
            "at": self.at,
            **self.data,
        }


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """A finished request: its outcome and every event it had."""

    request_id: str
    status: str
    """``completed``, ``failed`` or ``cancelled``."""
    events: list[Event]
    terminal: Event

    @property
    def content(self) -> str | None:
        """The model's whole text output (``complete`` only)."""
        value = self.terminal.data.get("content")
        return value if isinstance(value, str) else None

    @property
    def output(self) -> str | None:
        """The field value, in ``field`` mode."""
        value = self.terminal.data.get("output")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``base_s`` doubled per failed attempt, capped, with jitter."""

    base_s: float = 1.0
    cap_s: float = 30.0
    jitter: float = 0.25
    """Each delay is drawn from ``[d * (1 - jitter), d]``, so clients do not reconnect in step."""
    max_retries: int | None = 10
    """Consecutive reconnects without a new event before giving up (None: never give up)."""

    def delay(
        self, attempt: int, server_retry_s: float = 0.0, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before reconnect ``attempt`` (0-based); at least the server's retry."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 60))
        spread = (rng or _rng).random() * self.jitter
        return max(server_retry_s, ceiling * (1.0 - spread))


_rng = random.Random()
OnEvent = Callable[[Event], Awaitable[None] | None]


async def request_assistant(
    base_url: str,
    prompt: str,
    mode: str = "generate",
    *,
    track_id: str | None = None,
    context: dict[str, Any] | None = None,
    token: str | None = None,
    idempotency_key: str | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 (per HTTP call, as in httpx)
    client: httpx.AsyncClient | None = None,
) -> RequestHandle:
    """Queue a generation (``POST /assistant/request``) and return its handle."""
    body: dict[str, Any] = {"prompt": prompt, "mode": mode}
    if track_id is not None:
        body["track_id"] = track_id
    if context is not None:
        body["context"] = context
    headers = _bearer(token)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    async with _session(client) as http:
        response = await _send(
            http, "POST", _join(base_url, "/assistant/request"), headers, timeout, body
        )
    if response.status_code not in (200, 201):
        raise problem_error(response)
    fields = msgspec.json.decode(response.content, type=dict[str, Any])
    return RequestHandle(
        request_id=str(fields["request_id"]),
        status=str(fields["status"]),
        stream_url=str(fields["stream_url"]),
        created_at=str(fields["created_at"]),
        new=response.status_code == 201,
    )


async def stream_assistant_response(
    base_url: str,
    request: RequestHandle | str,
    *,
    token: str | None = None,
    last_event_id: int | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 (per HTTP call, as in httpx)
    read_timeout: float = 45.0,
    backoff: Backoff | None = None,
    client: httpx.AsyncClient | None = None,
) -> AsyncIterator[Event]:
    """Every event after ``last_event_id``, once each, in order, up to the terminal one.

    A dropped connection is resumed with ``Last-Event-ID``; a 204 (the terminal event was
    already seen) ends the iteration. The stream URL's own ``?token=`` is preferred over
    ``token``, which is used as a Bearer header when the URL has none or it expired.
    ``read_timeout`` (seconds without a byte) must exceed the server's ping interval.
    """
    backoff = backoff or Backoff()
    request_id = request if isinstance(request, str) else request.request_id
    plain_url = _join(base_url, f"/assistant/stream/{request_id}")
    url = plain_url if isinstance(request, str) else _join(base_url, request.stream_url)
    url_token = "token" in dict(parse_qsl(urlsplit(url).query))
    seen = last_event_id or 0
    server_retry_s = 0.0
    attempt = 0
    limits = httpx.Timeout(timeout, read=read_timeout)
    async with _session(client) as http:
        while True:
            headers = {"Accept": "text/event-stream", **({} if url_token else _bearer(token))}
            if seen:
                headers["Last-Event-ID"] = str(seen)
            progressed = False
            failure: GenstreamError | None = None
            try:
                async with http.stream("GET", url, headers=headers, timeout=limits) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        await response.aread()
                        failure = problem_error(response)
                        if response.status_code == 401 and url_token and token:
                            url, url_token = plain_url, False  # the URL's token expired
                            continue
                        if not failure.retryable:
                            raise failure
                    else:
                        framed = False
                        async for frame in read_frames(response.aiter_lines()):
                            framed = True
                            if frame.retry_ms is not None:
                                server_retry_s = frame.retry_ms / 1000.0
                            event = frame.event()
                            if event is None or event.seq <= seen:
                                continue
                            seen, progressed = event.seq, True
                            yield event
                            if event.terminal:
                                return
                        # The server ended a genuine stream (idle, shutdown): not a failure.
                        progressed = progressed or framed
                        failure = GenstreamError(
                            None, "stream_ended", "the stream closed before its terminal event"
                        )
            except httpx.TransportError as exc:
                failure = GenstreamError(None, "disconnected", f"{type(exc).__name__}: {exc}")
            if progressed:
                attempt = 0
            if backoff.max_retries is not None and attempt >= backoff.max_retries:
                raise GenstreamError(
                    None,
                    "stream_unavailable",
                    f"gave up on the stream of {request_id} after {attempt} reconnects "
                    f"without a new event (last failure: {failure})",
                ) from failure
            await asyncio.sleep(backoff.delay(attempt, server_retry_s))
            attempt += 1


async def interact_with_assistant(
    base_url: str,
    prompt: str,
    mode: str = "generate",
    *,
    track_id: str | None = None,
    context: dict[str, Any] | None = None,
    token: str | None = None,
    idempotency_key: str | None = None,
    on_event: OnEvent | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 (per HTTP call, as in httpx)
    backoff: Backoff | None = None,
    client: httpx.AsyncClient | None = None,
) -> Result:
    """Request a generation, follow its stream to the end and return the outcome.

    A failed or cancelled generation is a ``Result`` too (see ``status``), not an error.
    """
    async with _session(client) as http:
        handle = await request_assistant(
            base_url,
            prompt,
            mode,
            track_id=track_id,
            context=context,
            token=token,
            idempotency_key=idempotency_key,
            timeout=timeout,
            client=http,
        )
        events: list[Event] = []
        stream = stream_assistant_response(
            base_url, handle, token=token, timeout=timeout, backoff=backoff, client=http
        )
        async for event in stream:
            events.append(event)
            if on_event is not None and (pending := on_event(event)) is not None:
                await pending
    if not events or not events[-1].terminal:
        raise GenstreamError(None, "stream_ended", f"{handle.request_id} ended with no outcome")
    last = events[-1]
    return Result(
        request_id=handle.request_id, status=_OUTCOME[last.type], events=events, terminal=last
    )


async def cancel(
    base_url: str,
    request: RequestHandle | str,
    *,
    token: str | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 (per HTTP call, as in httpx)
    client: httpx.AsyncClient | None = None,
) -> str:
    """Cancel a request (idempotent); returns its status. 409 once it completed or failed."""
    request_id = request if isinstance(request, str) else request.request_id
    url = _join(base_url, f"/assistant/requests/{request_id}/cancel")
    async with _session(client) as http:
        response = await _send(http, "POST", url, _bearer(token), timeout)
    if response.status_code != 200:
        raise problem_error(response)
    return str(msgspec.json.decode(response.content, type=dict[str, Any])["status"])


def problem_error(response: httpx.Response) -> GenstreamError:
    """The ``GenstreamError`` an error response stands for (problem details when it has them)."""
    problem: dict[str, Any] = {}
    if "json" in response.headers.get("content-type", ""):
        try:
            problem = msgspec.json.decode(response.content, type=dict[str, Any])
        except msgspec.DecodeError:
            problem = {}
    retry_after = response.headers.get("retry-after", "")
    return GenstreamError(
        response.status_code,
        str(problem.get("code") or f"http_{response.status_code}"),
        str(problem.get("detail") or response.reason_phrase or "no detail"),
        problem=problem,
        retry_after_s=float(retry_after) if retry_after.isdigit() else None,
    )


# --- SSE parsing ----------------------------------------------------------------------------


@dataclass(slots=True)
class Frame:
    """One SSE frame (a block of ``field: value`` lines ended by a blank line)."""

    id: str | None = None
    name: str | None = None
    data: str | None = None
    retry_ms: int | None = None

    def event(self) -> Event | None:
        """The log event this frame carries; None for ``retry`` and ``snapshot`` frames."""
        if self.data is None or self.name in (None, "snapshot"):
            return None
        try:
            fields = msgspec.json.decode(self.data, type=dict[str, Any])
            return Event(
                request_id=str(fields.pop("request_id")),
                seq=int(fields.pop("seq")),
                type=str(fields.pop("type")),
                at=str(fields.pop("at")),
                data=fields,
            )
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise GenstreamError(
                None, "malformed_event", f"event {self.id} is not a genstream event: {exc}"
            ) from exc


async def read_frames(lines: AsyncIterator[str] | Iterable[str]) -> AsyncIterator[Frame]:
    """Frames from SSE lines; a frame cut short by a dropped connection is never yielded."""
    frame, touched = Frame(), False
    async for line in _aiter(lines):
        if line == "":
            if touched:
                yield frame
            frame, touched = Frame(), False
            continue
        if line.startswith(":"):
            continue  # a comment (": ping")
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        touched = True
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.name = value
        elif name == "data":
            frame.data = value if frame.data is None else f"{frame.data}\n{value}"
        elif name == "retry" and value.isdigit():
            frame.retry_ms = int(value)


async def _aiter(lines: AsyncIterator[str] | Iterable[str]) -> AsyncIterator[str]:
    if isinstance(lines, Iterable):
        for line in lines:
            yield line
    else:
        async for line in lines:
            yield line


# --- plumbing -------------------------------------------------------------------------------


@asynccontextmanager
async def _session(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's client, or a new one closed afterwards."""
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient() as own:
        yield own


async def _send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    timeout_s: float,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    content = None if body is None else msgspec.json.encode(body)
    if content is not None:
        headers = {**headers, "Content-Type": "application/json"}
    try:
        return await http.request(method, url, content=content, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException as exc:
        raise GenstreamError(
            None, "timeout", f"{method} {_no_query(url)} got no answer within {timeout_s:g} s"
        ) from exc
    except httpx.TransportError as exc:
        raise GenstreamError(
            None, "unreachable", f"{method} {_no_query(url)} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _join(base_url: str, path: str) -> str:
    """``path`` (as the server returns it, from its root) under ``base_url``."""
    if path.startswith(("http://", "https://")):
        return path
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def _no_query(url: str) -> str:
    """The URL without its query, so that a stream token never lands in a message."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
