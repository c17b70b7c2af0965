"""A real HTTP server on 127.0.0.1 that speaks enough of OpenAI's streaming Chat Completions.

Each test scripts the replies it wants, in order: streamed completions (text tokens, tool
calls whose arguments arrive in fragments, a closing usage chunk), HTTP failures, a delay
before the first byte, a stream that stalls with its socket left open, or one that is cut
off. The server records every request it receives. It runs on its own event loop in a
background thread, so sync and async tests (and child processes) can all talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypeAlias


@dataclass(frozen=True)
class ScriptedToolCall:
    """A tool call the fake model makes; ``arguments`` is sent verbatim, in fragments."""

    name: str
    arguments: str
    pieces: int = 3
    """How many chunks the arguments are split across."""


@dataclass(frozen=True)
class Completion:
    """A 200 ``text/event-stream`` reply."""

    tokens: Sequence[str] = ()
    tool_calls: Sequence[ScriptedToolCall] = ()
    finish_reason: str | None = None
    """Defaults to ``tool_calls`` when there are any, else ``stop``."""
    prompt_tokens: int = 12
    completion_tokens: int | None = None
    """Defaults to the number of content and tool-call chunks."""
    interleave: bool = False
    """Send the fragments of parallel tool calls round-robin instead of one call after another."""
    delay_s: float = 0.0
    """Wait this long before the response head (the client may give up first)."""
    stall_after: int | None = None
    """Send this many ``data:`` frames, then nothing more, leaving the socket open."""
    drop_after: int | None = None
    """Send this many ``data:`` frames, then reset the connection mid-body."""
    error_after: int | None = None
    """Send this many ``data:`` frames, then an ``{"error": ...}`` frame, and end the body."""


@dataclass(frozen=True)
class Failure:
    """An HTTP error reply with an OpenAI-style error body."""

    status: int
    message: str = "scripted failure"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Scripted: TypeAlias = Completion | Failure


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAIServer:
    """The scriptable fake; use as a context manager or call ``start``/``stop``."""

    def __init__(self) -> None:
        self._scripts: deque[Scripted] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._startup_error: BaseException | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """What to give the OpenAI client as ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Scripted) -> None:
        """Queue replies; each request takes the next one (none left: HTTP 500)."""
        with self._lock:
            self._scripts.extend(replies)

    def start(self) -> None:
        """Listen on an ephemeral loopback port; returns once it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("the fake OpenAI server did not start")
        if self._startup_error is not None:
            raise RuntimeError("the fake OpenAI server failed to start") from self._startup_error

    def stop(self) -> None:
        """Close the listener and every open connection (stalled ones included)."""
        if self._loop is None or self._thread is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the server thread -----------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start() instead of dying silently
            self._startup_error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            # HTTP/1.1 keep-alive: the client may reuse the connection for its next attempt.
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection can take another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, sep, value in (line.partition(":") for line in header_lines)
            if sep
        }
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body: dict[str, Any] = json.loads(raw) if raw else {}
        routed = method == "POST" and path.endswith("/chat/completions")
        with self._lock:
            self._requests.append(RecordedRequest(method, path, headers, body))
            reply = self._scripts.popleft() if routed and self._scripts else None
        if not routed:
            await _send_json(writer, 404, _error_body(f"no route {method} {path}"))
        elif reply is None:
            await _send_json(writer, 500, _error_body("the fake has no scripted reply left"))
        elif reply.delay_s and await _client_left_within(reader, reply.delay_s):
            return False
        elif isinstance(reply, Failure):
            await _send_json(writer, reply.status, _error_body(reply.message), reply.headers)
        elif body.get("stream") is not True:
            await _send_json(writer, 400, _error_body("the fake only speaks stream=true"))
        else:
            return await self._stream(reader, writer, reply, body)
        return headers.get("connection", "").lower() != "close"

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reply: Completion,
        body: dict[str, Any],
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"content-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = _frames(reply, str(body.get("model", "")), include_usage)
        for sent, frame in enumerate(frames):
            if sent == reply.stall_after:
                await writer.drain()
                await _client_left(reader)
                return False
            if sent == reply.drop_after:
                await writer.drain()
                writer.transport.abort()
                return False
            if sent == reply.error_after:
                await _send_frame(writer, json.dumps(_error_body("the model crashed")))
                break
            await _send_frame(writer, frame)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _frames(reply: Completion, model: str, include_usage: bool) -> list[str]:
    """The ``data:`` payloads of a streamed completion, ``[DONE]`` last."""
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        return json.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            }
        )

    def delta(d: dict[str, Any], finish_reason: str | None = None) -> str:
        return chunk([{"index": 0, "delta": d, "finish_reason": finish_reason, "logprobs": None}])

    frames = [delta({"role": "assistant", "content": ""})]
    frames += [delta({"content": token}) for token in reply.tokens]
    fragments = [_call_fragments(i, call) for i, call in enumerate(reply.tool_calls)]
    if reply.interleave:
        ordered = [f for row in _round_robin(fragments) for f in row]
    else:
        ordered = [f for call in fragments for f in call]
    frames += [delta({"tool_calls": [fragment]}) for fragment in ordered]
    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    frames.append(delta({}, finish))
    if include_usage:
        completion = reply.completion_tokens
        if completion is None:
            completion = len(reply.tokens) + len(ordered)
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": reply.prompt_tokens + completion,
        }
        frames.append(chunk([], usage))
    frames.append("[DONE]")
    return frames


def _call_fragments(index: int, call: ScriptedToolCall) -> list[dict[str, Any]]:
    """The streamed pieces of one tool call: id and name first, then argument fragments."""
    first = {
        "index": index,
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    step = max(1, -(-len(call.arguments) // max(1, call.pieces)))
    pieces = [call.arguments[i : i + step] for i in range(0, len(call.arguments), step)]
    return [first] + [{"index": index, "function": {"arguments": p}} for p in pieces]


def _round_robin(rows: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    longest = max((len(r) for r in rows), default=0)
    return [[r[i] for r in rows if i < len(r)] for i in range(longest)]


def _error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake_error", "param": None, "code": None}}


async def _send_json(
    writer: asyncio.StreamWriter,
    status: int,
    payload: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> None:
    data = json.dumps(payload).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(data)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()


async def _send_frame(writer: asyncio.StreamWriter, payload: str) -> None:
    """One SSE ``data:`` frame as one HTTP chunk."""
    data = f"data: {payload}\n\n".encode()
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


async def _client_left(reader: asyncio.StreamReader) -> None:
    """Return when the client closes its side (it timed out, or was closed)."""
    while await reader.read(4096):
        pass


async def _client_left_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait up to ``seconds``; whether the client hung up meanwhile."""
    try:
        await asyncio.wait_for(_client_left(reader), seconds)
    except TimeoutError:
        return False
    return True


@contextlib.contextmanager
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """A started fake, stopped on exit."""
    with FakeOpenAIServer() as server:
        yield server


@contextlib.contextmanager
def refused_base_url() -> Iterator[str]:
    """A loopback base URL that refuses connections.

    The port is bound but never listened on, so the kernel answers every connect with a
    reset, and no other process can take the port while the URL is in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
