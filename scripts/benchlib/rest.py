"""Server memory per open stream at rest: ``python -m scripts.benchlib.rest``.

N users each create a generation and hold its stream open, on the connection the POST was
answered on, as a browser does. The demo model writes one word every ``--pace-ms`` (20 s
by default), so every stream and generation stays open while hardly any events flow: the
figure is what an open stream costs, without the load's churn and without the host's
noise, which make the load benchmark's figure move by several KB from run to run. Idle
memory is read after 20 streams have been opened and closed (the warm-up).

Examples::

    python -m scripts.benchlib.rest --streams 1000 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from scripts.benchlib import users
from scripts.benchlib.httpclient import Connection
from scripts.benchlib.processes import HOST, start_service, wait_ready
from scripts.benchlib.run import rss_and_cpu

WARMUP_STREAMS = 20
RETRY_S = 0.5  # after a 429 while the streams are being opened
OPENING_AT_ONCE = 50  # streams being opened at a time: few 429s, little churn
OPEN_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class AtRest:
    """RSS of the service's processes, idle and with ``streams`` open."""

    streams: int
    idle_kib: float
    open_kib: float

    @property
    def kb_per_stream(self) -> float:
        return (self.open_kib - self.idle_kib) * 1.024 / self.streams


class Opened:
    """Counts streams open; ``all`` resolves when ``count`` are."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.all: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def one(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.all.set_result(None)


async def hold_stream(
    port: int, user: str, opening: asyncio.Semaphore, opened: Opened, release: asyncio.Event
) -> None:
    """Create a generation as ``user``, open its stream, and hold it until ``release``."""
    async with opening:
        conn = await open_stream(port, user)
    try:
        opened.one()
        await release.wait()
    finally:
        conn.abort()


async def open_stream(port: int, user: str) -> Connection:
    """Create a generation as ``user`` and open its stream on the same connection, up to
    its first event; the connection, holding the stream."""
    conn = await Connection.open(HOST, port)
    try:
        auth = users.bearer(user)
        body = msgspec.json.encode({"prompt": "a bakery in lyon", "mode": "chat"})
        while True:
            headers = [("Content-Type", "application/json"), auth]
            head, data = await conn.request("POST", "/assistant/request", headers, body)
            if head.status != 429:
                break
            await asyncio.sleep(RETRY_S)  # the service sheds while streams open fast
        if head.status != 201:
            raise RuntimeError(f"POST answered {head.status}: {data[:200]!r}")
        request_id = msgspec.json.decode(data)["request_id"]
        headers = [("Accept", "text/event-stream"), auth]
        head = await conn.send("GET", f"/assistant/stream/{request_id}", headers)
        if head.status != 200:
            raise RuntimeError(f"stream answered {head.status}")
        async for chunk in conn.chunks(head):
            if b"event: created" in chunk:
                return conn
        raise RuntimeError("the stream ended before its first event")
    except BaseException:
        conn.abort()
        raise


async def open_streams(
    port: int, count: int, first_user: int
) -> tuple[list[asyncio.Task[None]], asyncio.Event]:
    """``count`` streams open, one per user; the tasks holding them, and their release."""
    opened, opening, release = Opened(count), asyncio.Semaphore(OPENING_AT_ONCE), asyncio.Event()
    tasks = [
        asyncio.create_task(
            hold_stream(port, users.user_of(first_user + n), opening, opened, release)
        )
        for n in range(count)
    ]
    done, _ = await asyncio.wait(
        [opened.all, *tasks], timeout=OPEN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
    )
    if opened.all not in done:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        error = next(
            (r for r in results if not isinstance(r, (asyncio.CancelledError, type(None)))), None
        )
        raise RuntimeError(f"{opened.left} of {count} streams did not open: {error!r}")
    return tasks, release


async def measure(streams: int, workers: int, pace_ms: float) -> AtRest:
    """Start the service, warm it up, and read its RSS idle and with ``streams`` open."""
    workdir = Path(tempfile.mkdtemp(prefix="genstream-rest-"))
    child, port = start_service(workdir, pace_ms, streams + WARMUP_STREAMS, workers)
    try:
        await wait_ready(child, port)
        tasks, release = await open_streams(port, WARMUP_STREAMS, streams)
        release.set()
        await asyncio.gather(*tasks)
        idle, _ = await rss_and_cpu(child.pid)
        tasks, release = await open_streams(port, streams, 0)
        loaded, _ = await rss_and_cpu(child.pid)
        release.set()
        await asyncio.gather(*tasks)
        return AtRest(streams, idle, loaded)
    finally:
        child.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchlib.rest")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pace-ms", type=float, default=20_000, help="demo delay per word")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.workers < 1:
        parser.error("--streams and --workers must be at least 1")
    result = asyncio.run(measure(args.streams, args.workers, args.pace_ms))
    print(
        f"{result.streams} streams open at rest, {args.workers} worker(s): RSS "
        f"{result.idle_kib / 1024:.1f} -> {result.open_kib / 1024:.1f} MiB, "
        f"{result.kb_per_stream:.1f} KB per open stream"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
