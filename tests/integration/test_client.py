"""The Python client (app/client.py) against the real service: request, stream, resume, errors.

Disconnects are real: a TCP relay on 127.0.0.1 between the client and the service cuts each
connection in the middle of an SSE frame, after a set number of frames, so the client must
drop the partial frame, back off, and resume with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.api.auth import mint_token
from app.client import (
    Backoff,
    Event,
    GenstreamError,
    RequestHandle,
    cancel,
    interact_with_assistant,
    read_frames,
    request_assistant,
    stream_assistant_response,
)
from tests.support.invariants import assert_well_formed
from tests.support.server import ServiceProcess, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "client-tests-secret-0123456789abcdef"
FAST = Backoff(base_s=0.01, cap_s=0.05, jitter=0.0, max_retries=5)


class CuttingRelay:
    """TCP relay to the service that cuts its n-th connection mid-frame after ``cuts[n]`` frames.

    The cut comes a few bytes into the next frame's ``data:`` line, after its ``id:`` line:
    a client that took the id before the frame was complete would skip that event.
    """

    def __init__(self, target_port: int, cuts: list[int]) -> None:
        self.target_port = target_port
        self.cuts = cuts
        self.opened_at: list[float] = []
        self.cut_at: list[float] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> CuttingRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        n = len(self.opened_at)
        self.opened_at.append(time.monotonic())
        limit = self.cuts[n] if n < len(self.cuts) else None
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        upstream = asyncio.create_task(self._copy(reader, up_writer))
        try:
            await self._down(up_reader, writer, limit)
        finally:
            upstream.cancel()
            await asyncio.gather(upstream, return_exceptions=True)
            up_writer.close()
            writer.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None
    ) -> None:
        frames, previous, cutting, held = 0, 0, False, b""
        while data := await reader.read(65536):
            if limit is None:
                writer.write(data)
                await writer.drain()
                continue
            if not cutting:
                for i, byte in enumerate(data):
                    frames += byte == 10 and previous == 10
                    previous = byte
                    if frames == limit:
                        cutting = True
                        writer.write(data[: i + 1])
                        data = data[i + 1 :]
                        break
                else:
                    writer.write(data)
                    await writer.drain()
                    continue
            held += data
            if (at := held.find(b"data: ")) >= 0:
                writer.write(held[: at + 12])  # the next frame's id, event, and a bit of data
                await writer.drain()
                self.cut_at.append(time.monotonic())
                return


class CountingListener:
    """A TCP server that accepts and then closes (``mute=False``) or never answers."""

    def __init__(self, *, mute: bool = False) -> None:
        self.mute = mute
        self.accepted_at: list[float] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> CountingListener:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_at.append(time.monotonic())
        if self.mute:
            self._writers.append(writer)
        else:
            writer.transport.abort()


async def stored_events(base_url: str, request_id: str, token: str | None = None) -> list[Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=headers) as client:
        response = await client.get(
            f"/assistant/requests/{request_id}/events", params={"limit": 1000}
        )
    assert response.status_code == 200, response.text
    events: list[Any] = response.json()["events"]
    return events


async def collect(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


@pytest.fixture
def service(service_factory: Any) -> ServiceProcess:
    return service_factory(GENSTREAM_SSE_RETRY_MS="50", GENSTREAM_DEMO_TOKEN_DELAY_MS="2")


async def test_interact_returns_the_outcome_and_every_stored_event(service: ServiceProcess) -> None:
    seen: list[int] = []
    result = await interact_with_assistant(
        service.base_url,
        "a landing page for a tea shop in Kyoto",
        on_event=lambda event: seen.append(event.seq),
    )
    assert result.status == "completed"
    assert result.terminal.type == "complete" and result.terminal is result.events[-1]
    assert result.content is not None and "/// START HeroSection" in result.content
    wire = [event.to_json() for event in result.events]
    assert_well_formed(wire, result.request_id)
    assert wire == await stored_events(service.base_url, result.request_id)
    assert seen == [event.seq for event in result.events]
    starts = [e for e in result.events if e.type == "content_block_start"]
    assert starts and all(isinstance(e.data["name"], str) for e in starts)


async def test_cuts_mid_frame_resume_to_exactly_the_stored_events(
    service: ServiceProcess,
) -> None:
    handle = await request_assistant(service.base_url, "a page for a bike repair shop in Ghent")
    # The retry frame is frame 1: the cuts land after events 4, 11 and 13, mid-frame each time.
    async with CuttingRelay(service.port, cuts=[5, 8, 3]) as relay:
        events = await collect(
            stream_assistant_response(relay.base_url, handle, backoff=FAST, read_timeout=10)
        )
    wire = [event.to_json() for event in events]
    assert_well_formed(wire, handle.request_id)  # dense seq from 1: no gap, no duplicate
    assert wire == await stored_events(service.base_url, handle.request_id)
    assert len(relay.opened_at) == 4 and len(relay.cut_at) == 3
    assert len(events) > 13


async def test_resume_waits_at_least_the_servers_retry(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_SSE_RETRY_MS="600")
    handle = await request_assistant(service.base_url, "a page for a lamp maker")
    backoff = Backoff(base_s=0.001, cap_s=0.002, jitter=0.0)
    async with CuttingRelay(service.port, cuts=[3]) as relay:
        events = await collect(stream_assistant_response(relay.base_url, handle, backoff=backoff))
    assert [e.to_json() for e in events] == await stored_events(service.base_url, handle.request_id)
    gap = relay.opened_at[1] - relay.cut_at[0]
    assert 0.58 <= gap < 3.0, gap


async def test_reconnects_back_off_exponentially_then_give_up() -> None:
    backoff = Backoff(base_s=0.1, cap_s=0.3, jitter=0.0, max_retries=4)
    async with CountingListener() as listener:
        started = time.monotonic()
        with pytest.raises(GenstreamError) as raised:
            await collect(stream_assistant_response(listener.base_url, "x" * 8, backoff=backoff))
    assert raised.value.code == "stream_unavailable" and raised.value.status is None
    assert isinstance(raised.value.__cause__, GenstreamError)
    assert len(listener.accepted_at) == 5  # the first try and 4 retries
    gaps = [b - a for a, b in itertools.pairwise(listener.accepted_at)]
    for gap, expected in zip(gaps, [0.1, 0.2, 0.3, 0.3], strict=True):
        assert expected - 0.02 <= gap < expected + 0.5, (gaps, expected)
    assert time.monotonic() - started >= 0.88


def test_backoff_doubles_to_the_cap_with_jitter_and_honours_the_server_minimum() -> None:
    plain = Backoff(base_s=1.0, cap_s=30.0, jitter=0.0)
    assert [plain.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert plain.delay(10_000) == 30
    jittered = Backoff()
    rng = random.Random(7)
    for n in range(8):
        ceiling = min(30.0, 2.0**n)
        assert 0.75 * ceiling <= jittered.delay(n, rng=rng) <= ceiling
    assert jittered.delay(0, server_retry_s=2.0) == 2.0
    assert jittered.delay(7, server_retry_s=45.0) == 45.0


async def test_a_client_that_has_the_terminal_event_gets_204_and_stops(
    service: ServiceProcess,
) -> None:
    result = await interact_with_assistant(service.base_url, "a chat about maps", "chat")
    last = result.terminal.seq
    async with CuttingRelay(service.port, cuts=[]) as relay:
        again = await collect(
            stream_assistant_response(relay.base_url, result.request_id, last_event_id=last)
        )
        tail = await collect(
            stream_assistant_response(relay.base_url, result.request_id, last_event_id=last - 2)
        )
    assert again == [] and len(relay.opened_at) == 2
    assert tail == result.events[-2:]


async def test_http_errors_are_typed_problems_and_not_retried(service: ServiceProcess) -> None:
    with pytest.raises(GenstreamError) as bad_mode:
        await request_assistant(service.base_url, "a poem", mode="poem")
    assert (bad_mode.value.status, bad_mode.value.code) == (400, "invalid_parameter")
    assert "mode" in bad_mode.value.detail and not bad_mode.value.retryable
    assert bad_mode.value.problem["instance"] == "/assistant/request"

    unknown = "01a1fc37-a6b5-7377-a036-ea727e2abc5e"
    async with CuttingRelay(service.port, cuts=[]) as relay:
        with pytest.raises(GenstreamError) as missing:
            await collect(stream_assistant_response(relay.base_url, unknown, backoff=FAST))
    assert (missing.value.status, missing.value.code) == (404, "request_not_found")
    assert len(relay.opened_at) == 1

    done = await interact_with_assistant(service.base_url, "a chat about kites", "chat")
    with pytest.raises(GenstreamError) as finished:
        await cancel(service.base_url, done.request_id)
    assert (finished.value.status, finished.value.code) == (409, "already_finished")


async def test_cancel_ends_the_stream_with_cancelled(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_DEMO_TOKEN_DELAY_MS="40")
    handle = await request_assistant(service.base_url, "a long page for a planetarium")
    events: list[Event] = []
    async for event in stream_assistant_response(service.base_url, handle):
        events.append(event)
        if event.type == "content_block_start":
            assert await cancel(service.base_url, handle) == "cancelled"
            assert await cancel(service.base_url, handle.request_id) == "cancelled"  # idempotent
    assert events[-1].type == "cancelled"
    assert [e.to_json() for e in events] == await stored_events(service.base_url, handle.request_id)


async def test_field_mode_and_idempotency_keys(service: ServiceProcess) -> None:
    context = {
        "element_id": "HeroSection-1_custom_cta",
        "field": "cta",
        "business_description": "A bakery in Lyon.",
    }
    result = await interact_with_assistant(
        service.base_url,
        "Write the button",
        "field",
        track_id="doc-1",
        context=context,
        idempotency_key="cta-1",
    )
    assert result.status == "completed" and result.output
    (action,) = [e for e in result.events if e.type == "action"]
    assert action.data == {
        "action": "set_field",
        "element_id": "HeroSection-1_custom_cta",
        "field": "cta",
        "value": result.output,
    }
    again = await request_assistant(
        service.base_url,
        "Write the button",
        "field",
        track_id="doc-1",
        context=context,
        idempotency_key="cta-1",
    )
    assert again.request_id == result.request_id and not again.new
    assert again.status == "completed"


async def test_auth_bearer_and_scoped_stream_tokens(service_factory: Any) -> None:
    service = service_factory(GENSTREAM_JWT_SECRET=SECRET, GENSTREAM_SSE_RETRY_MS="50")
    token = mint_token(SECRET, "alice", ttl=timedelta(minutes=5))
    with pytest.raises(GenstreamError) as anonymous:
        await request_assistant(service.base_url, "a page for a cafe")
    assert (anonymous.value.status, anonymous.value.code) == (401, "unauthorized")

    handle = await request_assistant(service.base_url, "a page for a cafe", token=token)
    assert "?token=" in handle.stream_url
    # No bearer: the stream URL's own token, scoped to this request, opens it.
    events = await collect(stream_assistant_response(service.base_url, handle))
    assert [e.to_json() for e in events] == await stored_events(
        service.base_url, handle.request_id, token
    )
    # An expired stream token falls back to the bearer token, once.
    expired = mint_token(SECRET, "alice", ttl=timedelta(seconds=-5), stream_of=handle.request_id)
    stale = RequestHandle(
        request_id=handle.request_id,
        status="queued",
        stream_url=f"/assistant/stream/{handle.request_id}?token={expired}",
        created_at=handle.created_at,
    )
    assert await collect(stream_assistant_response(service.base_url, stale, token=token)) == events
    with pytest.raises(GenstreamError) as no_fallback:
        await collect(stream_assistant_response(service.base_url, stale))
    assert no_fallback.value.status == 401 and "expired" in no_fallback.value.detail
    with pytest.raises(GenstreamError) as bob:
        bob_token = mint_token(SECRET, "bob", ttl=timedelta(minutes=5))
        await cancel(service.base_url, handle, token=bob_token)
    assert bob.value.status == 404  # someone else's request does not exist


async def test_a_silent_server_times_out() -> None:
    async with CountingListener(mute=True) as listener:
        started = time.monotonic()
        with pytest.raises(GenstreamError) as raised:
            await request_assistant(listener.base_url, "anything", timeout=0.3)
        assert raised.value.code == "timeout" and raised.value.retryable
        assert time.monotonic() - started < 3
        with pytest.raises(GenstreamError) as stream:
            await collect(
                stream_assistant_response(
                    listener.base_url,
                    "x" * 8,
                    read_timeout=0.2,
                    backoff=Backoff(base_s=0.01, jitter=0.0, max_retries=1),
                )
            )
        assert stream.value.code == "stream_unavailable"
        assert len(listener.accepted_at) == 3


async def test_unreachable_service_is_a_typed_error() -> None:
    with pytest.raises(GenstreamError) as raised:
        await request_assistant(f"http://127.0.0.1:{free_port()}", "anything")
    assert raised.value.code == "unreachable" and raised.value.status is None


async def test_sse_parsing_keeps_only_complete_frames() -> None:
    lines = [
        "retry: 50",
        "",
        ": ping",
        "",
        "id: 1",
        "event: created",
        'data: {"request_id":"r","seq":1,"type":"created","at":"t","mode":"chat"}',
        "",
        "id: 2",
        "event: stage",
        'data: {"request_id":"r","seq":2,',
    ]
    frames = [frame async for frame in read_frames(lines)]
    assert [f.retry_ms for f in frames] == [50, None]
    assert [f.event() for f in frames] == [
        None,
        Event(request_id="r", seq=1, type="created", at="t", data={"mode": "chat"}),
    ]
    multi = [f async for f in read_frames(["event: x", "data: a", "data: b", ""])]
    assert multi[0].data == "a\nb"
    with pytest.raises(GenstreamError) as malformed:
        multi[0].event()
    assert malformed.value.code == "malformed_event"
