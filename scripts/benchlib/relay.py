"""The non-durable relay: the baseline that isolates the cost of durability.

Same stack as the service (Litestar on uvicorn, same loop and HTTP parser), same routes
the load generator uses, same framing (``id:/event:/data:``) and the same JSON envelope,
but events live only in memory: a producer task per request publishes the calibration
script's events at their recorded offsets, and subscribers are woken in-process. There
is no database, no auth, no queue and no runner. Run: ``python -m scripts.benchlib.relay
--port P --scripts FILE``.

A finished request keeps its events for ``RETENTION_S`` (resumes need them), then only
their types (for the end-of-run verification), so that the memory figure measures open
streams, not history.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.response import Response, Stream

from scripts.benchlib.template import Batch, decode_scripts
from scripts.benchlib.verify import TERMINAL_TYPES

RETENTION_S = 3.0  # a resume comes within 0.3 s of a drop; then keep only types
PING_INTERVAL_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
SCRIPTS: dict[str, list[Batch]] = {}
LIVE: dict[str, Live] = {}
TASKS: set[asyncio.Task[None]] = set()


class CreateBody(msgspec.Struct, kw_only=True):
    """The subset of the service's request body the relay understands."""

    prompt: str
    mode: str = "chat"
    track_id: str | None = None
    context: dict[str, Any] | None = None


class CreatedBody(msgspec.Struct, kw_only=True):
    """The service's 201 body."""

    request_id: str
    status: str
    stream_url: str
    created_at: str


def format_at(at: datetime) -> str:
    """RFC 3339 UTC with microseconds, as the service writes ``at``."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Live:
    """One request's events, in memory, and the wake-up of its subscribers."""

    __slots__ = ("changed", "done", "envelopes", "request_id", "types")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.envelopes: list[bytes] | None = []
        self.types: list[str] = []
        self.done = False
        self.changed = asyncio.Event()

    def publish(self, events: list[tuple[str, bytes]]) -> str:
        """Append events stamped now, wake every subscriber; returns the stamp."""
        at = format_at(datetime.now(UTC))
        assert self.envelopes is not None
        for type_, payload in events:
            head = (
                f'{{"request_id":"{self.request_id}","seq":{len(self.types) + 1},'
                f'"type":"{type_}","at":"{at}"'
            ).encode()
            self.envelopes.append(head + b"}" if payload == b"{}" else head + b"," + payload[1:])
            self.types.append(type_)
            self.done = self.done or type_ in TERMINAL_TYPES
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()
        return at

    def compact(self) -> None:
        """Forget the payloads of a finished request (keep the types for verification)."""
        self.envelopes = None


async def produce(live: Live, script: list[Batch]) -> None:
    """Publish the script's later batches at their offsets from now."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for offset, events in script[1:]:
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        live.publish(events)
    loop.call_later(RETENTION_S, live.compact)


def problem(status: int, code: str) -> Response[bytes]:
    body = msgspec.json.encode({"status": status, "code": code, "title": code})
    return Response(body, status_code=status, media_type="application/problem+json")


@post("/assistant/request", status_code=201)
async def create(data: CreateBody) -> Response[Any]:
    """Start a scripted generation; answer like the service."""
    if not data.prompt.strip():
        return problem(400, "empty_prompt")
    script = SCRIPTS.get(data.prompt) or next(iter(SCRIPTS.values()))
    live = Live(str(uuid.uuid4()))
    LIVE[live.request_id] = live
    created_at = live.publish(script[0][1])
    task = asyncio.create_task(produce(live, script))
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    body = CreatedBody(
        request_id=live.request_id,
        status="queued",
        stream_url=f"/assistant/stream/{live.request_id}",
        created_at=created_at,
    )
    return Response(
        body, status_code=201, headers={"Location": f"/assistant/requests/{live.request_id}"}
    )


@get("/assistant/stream/{request_id:str}", media_type="text/event-stream")
async def stream(request: Request[Any, Any, Any], request_id: str) -> Response[Any]:
    """Every event after Last-Event-ID, then the live tail, closed after the terminal."""
    live = LIVE.get(request_id)
    if live is None:
        return problem(404, "request_not_found")
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw and not raw.isdigit():
        return problem(400, "malformed_last_event_id")
    seen = int(raw or 0)
    if seen > len(live.types):
        return problem(409, "last_event_id_ahead")
    if live.done and seen == len(live.types):
        return Response(content=b"", status_code=204)
    if live.envelopes is None:
        return problem(410, "request_purged")
    return Stream(sse_body(live, seen), media_type="text/event-stream", headers=SSE_HEADERS)


async def sse_body(live: Live, sent: int) -> AsyncIterator[bytes]:
    """The SSE body, from memory."""
    yield b"retry: 2000\n\n"
    while True:
        changed = live.changed
        envelopes = live.envelopes
        if envelopes is None:
            return
        count = len(envelopes)
        if count > sent:
            yield b"".join(
                b"id: %d\nevent: %s\ndata: %s\n\n"
                % (seq + 1, live.types[seq].encode(), envelopes[seq])
                for seq in range(sent, count)
            )
            sent = count
        if live.done and sent == count:
            return
        try:
            async with asyncio.timeout(PING_INTERVAL_S):
                await changed.wait()
        except TimeoutError:
            yield b": ping\n\n"


@get("/assistant/requests/{request_id:str}/events")
async def events(request_id: str, after: int = 0, limit: int = 500) -> Response[Any]:
    """The stored events as JSON (only ``request_id/seq/type`` once compacted)."""
    live = LIVE.get(request_id)
    if live is None:
        return problem(404, "request_not_found")
    end = min(len(live.types), after + max(1, min(limit, 1000)))
    if live.envelopes is not None:
        items = live.envelopes[after:end]
    else:
        items = [
            b'{"request_id":"%s","seq":%d,"type":"%s"}'
            % (request_id.encode(), seq + 1, live.types[seq].encode())
            for seq in range(after, end)
        ]
    terminal = end == len(live.types) and live.done
    body = b'{"request_id":"%s","events":[%s],"last_seq":%d,"terminal":%s}' % (
        request_id.encode(),
        b",".join(items),
        len(live.types),
        b"true" if terminal else b"false",
    )
    return Response(body, media_type="application/json")


@get("/ready")
async def ready() -> dict[str, str]:
    """Always ready once serving."""
    return {"status": "ready"}


def create_app() -> Litestar:
    """The relay application."""
    return Litestar(route_handlers=[create, stream, events, ready])


def main() -> None:
    """Serve the relay on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(description="genstream bench: non-durable SSE relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scripts", type=Path, required=True)
    args = parser.parse_args()
    SCRIPTS.update(decode_scripts(args.scripts.read_bytes()))
    if not SCRIPTS:
        parser.error("the scripts file holds no script")
    # The same uvicorn configuration as ``genstream serve`` (app/cli.py).
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=5,
        access_log=False,
    )


if __name__ == "__main__":
    main()
