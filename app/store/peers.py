"""Worker processes sharing one SQLite file hand each other their commits.

With ``GENSTREAM_WORKERS`` above one, a generation runs in whichever worker claimed it,
while its streams are served by whichever worker accepted each client's connection. Each
worker listens on a Unix socket in a directory the supervisor gives it, opens one
connection to every other worker, and after each group commit sends the committed events
down each of them (msgpack, length-prefixed). The receiving worker publishes them to its
hub: subscribers get them without a database read. A client's backlog, on connecting,
comes from the database (on SQLite, a page read on the event loop).

The log stays the source of truth. One worker's events arrive in commit order; a
subscriber that sees a gap (two workers appended to one request, or a link dropped)
reads the database, and every subscriber also checks the log once per poll interval, so
a lost shipment delays an event by at most that long. A peer that stops reading is
disconnected once ``max_buffer`` bytes wait for it, rather than holding this worker's
memory; the next scan of the directory connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from app.domain.events import StoredEvent
from app.store.hub import Hub

log = logging.getLogger(__name__)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[StoredEvent])
_HEADER = 4  # bytes of big-endian frame length


@dataclass(slots=True)
class PeerStats:
    """Counters for metrics."""

    sent: int = 0
    """Events shipped to other workers (once per event, however many peers)."""
    received: int = 0
    """Events received from other workers."""
    dropped_links: int = 0
    """Connections to peers closed because the peer stopped reading."""


class PeerLink:
    """This worker's connections to the other workers sharing the database."""

    def __init__(
        self,
        directory: Path,
        hub: Hub,
        *,
        name: str | None = None,
        on_created: Callable[[], None] | None = None,
        scan_s: float = 1.0,
        max_buffer: int = 8 << 20,
    ) -> None:
        self._dir = directory
        self._hub = hub
        self.path = directory / f"{name or os.getpid()}.sock"
        self._on_created = on_created
        self._scan_s = scan_s
        self._max_buffer = max_buffer
        self._outbound: dict[Path, asyncio.Transport] = {}
        self._inbound: set[asyncio.BaseTransport] = set()
        self._connecting: set[Path] = set()
        self._server: asyncio.AbstractServer | None = None
        self._scanner: asyncio.Task[None] | None = None
        self._scans: set[asyncio.Task[None]] = set()
        self.stats = PeerStats()

    @property
    def peers(self) -> int:
        """Workers this one currently sends its commits to."""
        return len(self._outbound)

    async def start(self) -> None:
        """Listen, connect to the workers already running, and keep looking for new ones."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Inbound(self), path=str(self.path))
        await self.scan()
        self._scanner = asyncio.create_task(self._scan_periodically(), name="peer-scan")

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
        for task in list(self._scans):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for transport in [*self._outbound.values(), *self._inbound]:
            transport.close()
        self._outbound.clear()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def send(self, events: list[StoredEvent]) -> None:
        """Ship one commit's events to every peer."""
        if not events or not self._outbound:
            return
        body = _ENCODER.encode(events)
        frame = len(body).to_bytes(_HEADER, "big") + body
        for path, transport in list(self._outbound.items()):
            if transport.get_write_buffer_size() > self._max_buffer:
                log.warning("worker %s stopped reading commits; disconnecting it", path.stem)
                self.stats.dropped_links += 1
                del self._outbound[path]
                transport.abort()
                continue
            transport.write(frame)
        self.stats.sent += len(events)

    async def scan(self) -> None:
        """Connect to every worker in the directory this one is not connected to yet."""
        loop = asyncio.get_running_loop()
        for path in sorted(self._dir.glob("*.sock")):
            if path == self.path or path in self._outbound or path in self._connecting:
                continue
            self._connecting.add(path)
            try:
                transport, _ = await loop.create_unix_connection(
                    functools.partial(_Outbound, self, path), str(path)
                )
            except OSError:
                continue  # (a worker that exited left its socket behind)
            finally:
                self._connecting.discard(path)
            self._outbound[path] = transport

    async def _scan_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._scan_s)
            try:
                await self.scan()
            except Exception:
                log.exception("looking for other workers failed; retrying")

    def _received(self, events: list[StoredEvent]) -> None:
        self.stats.received += len(events)
        self._hub.publish(events)
        if self._on_created is not None and any(e.seq == 1 for e in events):
            self._on_created()

    def _inbound_opened(self, transport: asyncio.BaseTransport) -> None:
        self._inbound.add(transport)
        # A worker that just started connected to this one: connect back without waiting
        # for the next scan, so that this worker's commits reach it too.
        task = asyncio.get_running_loop().create_task(self.scan())
        self._scans.add(task)
        task.add_done_callback(self._scans.discard)

    def _inbound_lost(self, transport: asyncio.BaseTransport) -> None:
        self._inbound.discard(transport)

    def _outbound_lost(self, path: Path, transport: asyncio.BaseTransport) -> None:
        if self._outbound.get(path) is transport:
            del self._outbound[path]


class _Inbound(asyncio.Protocol):
    """Commits from another worker: length-prefixed msgpack lists of events."""

    def __init__(self, link: PeerLink) -> None:
        self._link = link
        self._buffer = bytearray()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._link._inbound_opened(transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _HEADER:
            end = start + _HEADER + int.from_bytes(buffer[start : start + _HEADER], "big")
            if len(buffer) < end:
                break
            try:
                events = _DECODER.decode(bytes(buffer[start + _HEADER : end]))
            except msgspec.DecodeError:
                log.exception("a worker sent an unreadable commit; disconnecting it")
                assert self._transport is not None
                self._transport.close()
                buffer.clear()
                return
            self._link._received(events)
            start = end
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._link._inbound_lost(self._transport)


class _Outbound(asyncio.Protocol):
    """This worker's commits, going to another worker (which sends nothing back)."""

    def __init__(self, link: PeerLink, path: Path) -> None:
        self._link = link
        self._path = path
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._link._outbound_lost(self._path, self._transport)
