"""The benchmark's load generator against a loopback HTTP server (in this process)
standing in for the service: a slot holds one connection, as a browser's pool would, and
every event arrives.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest

from scripts.benchlib.load import PROMPTS, LoadPlan, Recorder, Slot, calibrate

TYPES = ("created", "response_chunk", "response_chunk", "complete")


class FakeService:
    """Answers ``POST /assistant/request`` with 201, a stream with four chunked events
    (404 for ``gone``); counts the connections it accepted and the requests on each."""

    def __init__(self, refuse: int = 0, broken: bool = False) -> None:
        self.requests_per_connection: list[int] = []
        self.created = 0
        self.refuse = refuse
        """The first POSTs to answer 429, as a service shedding load does."""
        self.broken = broken
        """Answer every POST 500."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.requests_per_connection)
        self.requests_per_connection.append(0)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.requests_per_connection[index] += 1
                lines = head.decode("latin-1").split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
                await reader.readexactly(int(headers.get("content-length", "0")))
                if lines[0].startswith("POST") and self.broken:
                    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
                elif lines[0].startswith("POST") and self.refuse > 0:
                    self.refuse -= 1
                    writer.write(
                        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
                elif lines[0].startswith("POST"):
                    self.created += 1
                    body = msgspec.json.encode({"request_id": f"r{self.created}"})
                    writer.write(
                        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                elif lines[0].startswith("GET /assistant/stream/gone"):
                    body = b'{"status":404,"code":"not_found"}'
                    writer.write(
                        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/problem+json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                else:
                    await self._stream(writer, int(headers.get("last-event-id", "0")))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter, after: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for seq, kind in enumerate(TYPES, 1):
            if seq <= after:
                continue
            data = b'{"seq":%d,"type":"%s","at":"2026-01-01T00:00:00.000000Z"}' % (
                seq,
                kind.encode(),
            )
            frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), data)
            writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            await writer.drain()
        writer.write(b"0\r\n\r\n")


@asynccontextmanager
async def fake_service(
    refuse: int = 0, broken: bool = False
) -> AsyncIterator[tuple[FakeService, int]]:
    service = FakeService(refuse, broken)
    server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
    try:
        yield service, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _generation(slot: Slot, drop_after: int = 0) -> str:
    """One generation created and its stream followed; its request id."""
    request_id = await slot.create("a bakery in lyon")
    assert request_id is not None
    await slot.follow(request_id, 0.0, drop_after)
    return request_id


def _slot(port: int) -> tuple[Slot, Recorder]:
    plan = LoadPlan(host="127.0.0.1", port=port, streams=1)
    rec = Recorder(0.0, 0.0)
    return Slot(plan, rec, random.Random(1), "bench-0"), rec


@pytest.mark.anyio
async def test_a_slot_sends_its_posts_and_streams_on_one_connection() -> None:
    async with fake_service() as (service, port):
        slot, rec = _slot(port)
        for _ in range(3):
            await _generation(slot)
        slot.drop_idle()
    assert service.requests_per_connection == [6]
    assert rec.received == {f"r{n}": list(enumerate(TYPES, 1)) for n in (1, 2, 3)}
    assert rec.open_streams == 0
    assert not rec.errors


@pytest.mark.anyio
async def test_a_dropped_stream_resumes_on_a_new_connection_and_misses_nothing() -> None:
    async with fake_service() as (service, port):
        slot, rec = _slot(port)
        await _generation(slot, drop_after=2)
        await slot.create("a bakery in lyon")
        slot.drop_idle()
    # The POST and the stream it dropped; the resume, then the next POST on its connection.
    assert service.requests_per_connection == [2, 2]
    assert rec.received["r1"] == list(enumerate(TYPES, 1))
    assert rec.resumes == 1
    assert not rec.errors


@pytest.mark.anyio
async def test_a_refused_stream_leaves_its_connection_ready_for_the_next_request() -> None:
    async with fake_service() as (service, port):
        slot, rec = _slot(port)
        await slot.follow("gone", 0.0, 0)
        request_id = await _generation(slot)
        slot.drop_idle()
    assert service.requests_per_connection == [3]
    assert rec.errors == {"stream 404": 1}
    assert rec.received[request_id] == list(enumerate(TYPES, 1))


@pytest.mark.anyio
async def test_the_warm_up_waits_out_refusals() -> None:
    # A service that has only just started may still shed load for a moment.
    async with fake_service(refuse=len(PROMPTS) + 1) as (service, port):
        traces = await calibrate("127.0.0.1", port, "chat")
    assert sorted(traces) == sorted(PROMPTS)
    assert service.created == len(PROMPTS) and service.refuse == 0
    assert all([kind for _, kind, _ in trace] == list(TYPES) for trace in traces.values())


@pytest.mark.anyio
async def test_the_warm_up_gives_up_at_once_on_anything_but_a_refusal() -> None:
    async with fake_service(broken=True) as (service, port):
        with pytest.raises(RuntimeError, match=r"calibration request refused: \{'POST 500'"):
            await calibrate("127.0.0.1", port, "chat")
    # One POST per warm-up generation: a 500 is not waited out as a 429 is.
    assert sum(service.requests_per_connection) == len(PROMPTS)
