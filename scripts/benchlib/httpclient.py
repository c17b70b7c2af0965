"""A minimal HTTP/1.1 client on asyncio streams: cheaper per request and per event than
httpx, so that the load generator is not the bottleneck. Loopback only, no TLS, no
redirects; bodies by Content-Length or chunked transfer coding (RFC 9112 section 7.1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import NamedTuple

MAX_HEAD_BYTES = 65_536


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client understands it."""


class Head(NamedTuple):
    """Status line and headers of a response (header names in lower case)."""

    status: int
    headers: dict[str, str]


def parse_head(raw: bytes) -> Head:
    """The status and headers from a response head ending with an empty line."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Head(int(parts[1]), headers)


def request_bytes(
    method: str, path: str, host: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
) -> bytes:
    """One request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One keep-alive connection; requests are sent one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._host = host
        self.reusable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect to ``host:port``."""
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD_BYTES)
        return cls(reader, writer, f"{host}:{port}")

    async def send(
        self, method: str, path: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> Head:
        """Send a request and read the response head (the body is read separately)."""
        self._writer.write(request_bytes(method, path, self._host, headers, body))
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("response head too large") from exc
        head = parse_head(raw)
        if head.headers.get("connection", "").lower() == "close":
            self.reusable = False
        return head

    async def body(self, head: Head) -> bytes:
        """The whole body of the response whose head was just read."""
        if head.status in (204, 304) or 100 <= head.status < 200:
            return b""
        if head.headers.get("transfer-encoding", "").lower() == "chunked":
            return b"".join([chunk async for chunk in self.chunks(head)])
        length = head.headers.get("content-length")
        if length is None:
            self.reusable = False
            return await self._reader.read()
        return await self._reader.readexactly(int(length))

    async def chunks(self, head: Head) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (one server write each, for a streamed body)."""
        if head.headers.get("transfer-encoding", "").lower() != "chunked":
            yield await self.body(head)
            return
        reader = self._reader
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError as exc:
                raise ProtocolError(f"bad chunk size line {line!r}") from exc
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailer fields, unused
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]

    async def request(
        self, method: str, path: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> tuple[Head, bytes]:
        """Send a request and read the whole response."""
        head = await self.send(method, path, headers, body)
        return head, await self.body(head)

    def abort(self) -> None:
        """Drop the connection at once, as a client losing its network would."""
        self.reusable = False
        self._writer.transport.abort()

    async def close(self) -> None:
        """Close the connection politely."""
        self.reusable = False
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
