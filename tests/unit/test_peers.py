"""Worker processes' commit shipping (``PeerLink``), over real Unix sockets: what one worker
commits reaches the other's subscribers, in order, and a lost or stuck link costs a
connection, never a wrong event."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.domain.events import StoredEvent, envelope_json
from app.store.hub import Hub
from app.store.peers import PeerLink

pytestmark = pytest.mark.anyio

AT = datetime(2026, 11, 21, 8, 30, 15, 123456, tzinfo=UTC)


def event(seq: int, type_: str = "response_chunk", rid: str = "r1") -> StoredEvent:
    data = b'{"delta":"' + b"x" * seq + b'"}'
    return StoredEvent(id=100 + seq, request_id=rid, seq=seq, type=type_, at=AT, data=data)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for something another socket end does (a connection closing, say)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[PeerLink, PeerLink, Hub, list[int]]]:
    """Worker a, and worker b whose hub is watched; b counts the creations it hears of."""
    created: list[int] = []
    hub_b = Hub()
    a = PeerLink(tmp_path, Hub(), name="a")
    b = PeerLink(tmp_path, hub_b, name="b", on_created=lambda: created.append(1))
    await a.start()
    await b.start()  # b connects to a; a connects back when b's connection arrives
    await until(lambda: a.peers == 1 and b.peers == 1)
    yield a, b, hub_b, created
    await b.close()
    await a.close()


async def test_one_workers_commits_reach_the_others_subscribers_in_order(
    pair: tuple[PeerLink, PeerLink, Hub, list[int]],
) -> None:
    a, _, hub_b, created = pair
    box = hub_b.register("r1")
    first, second = [event(1, "created"), event(2)], [event(3), event(4, "complete")]
    a.send(first)
    a.send(second)
    received: list[tuple[bytes, datetime]] = []
    while len(received) < 4:
        assert await box.wait(5.0)
        received += [(item.envelope, item.at) for item in box.take()]
    sent = [(envelope_json(e), e.at) for e in first + second]
    assert received == sent, "every field a client gets, the commit time included, survives"
    assert created == [1], "a created event wakes the other worker's dispatcher"
    assert a.stats.sent == 4


async def test_a_lost_link_costs_its_connection_and_keeps_what_was_delivered(
    pair: tuple[PeerLink, PeerLink, Hub, list[int]],
) -> None:
    a, b, hub_b, _ = pair
    box = hub_b.register("r1")
    a.send([event(1, "created")])
    await until(lambda: b.stats.received == 1)
    await a.close()
    await until(lambda: b.peers == 0)
    b.send([event(2)])  # nobody to send to: dropped, not buffered
    assert [item.seq for item in box.take()] == [1]


async def test_a_worker_that_stops_reading_is_disconnected(tmp_path: Path) -> None:
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.bind(str(tmp_path / "stuck.sock"))
    stuck.listen()  # accepts (in the kernel) but never reads
    link = PeerLink(tmp_path, Hub(), name="a", max_buffer=64 << 10)
    try:
        await link.start()
        assert link.peers == 1
        big = [event(n) for n in range(1, 400)]
        while link.stats.dropped_links == 0:
            link.send(big)
            await asyncio.sleep(0)  # let the transport write what the kernel takes
        assert link.peers == 0
        link.send(big)  # nobody left to send to: nothing is buffered
    finally:
        await link.close()
        stuck.close()


async def test_a_worker_started_later_is_connected_both_ways(tmp_path: Path) -> None:
    a = PeerLink(tmp_path, Hub(), name="a")
    await a.start()
    assert a.peers == 0
    hub_c = Hub()
    c = PeerLink(tmp_path, hub_c, name="c")
    try:
        await c.start()
        await until(lambda: a.peers == 1 and c.peers == 1)
        box = hub_c.register("r2")
        a.send([event(1, "created", rid="r2")])
        assert await box.wait(5.0)
        assert [item.envelope for item in box.take()] == [
            envelope_json(event(1, "created", rid="r2"))
        ]
    finally:
        await c.close()
        await a.close()
