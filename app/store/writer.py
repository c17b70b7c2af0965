"""The log's writer process: with worker processes on SQLite, every group commit runs here.

Worker processes share one SQLite file, and SQLite lets one connection write at a time.
When each worker ran its own group commits, each held the write lock while its write
thread shared an interpreter with the worker's event loop: a transaction of about a
millisecond of CPU took 5-7 ms, the other worker queued behind it at the lock, and the
write delay that followed tripped load shedding while the machine had cores to spare
(docs/benchmarks.md, "One log writer process"). So the supervisor starts one more process,
which does nothing but the log's group commits for every worker (``serve_writes``), and
each worker's ``EventLog`` hands its batches to it over a Unix socket (``RemoteWriter``).
The batch, its checks and its statements are the same (``EventLog.write_batch``); only
the process they run in changed. Claims, lease renewals and other writes stay in the
workers and take turns with the writer at the same write-lock file.

The socket lives in a directory only the service's user can enter (the supervisor's
``mkdtemp``), and carries pickled batches and answers between processes of one program.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import selectors
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.store.engine import Engines, SQLiteThreads
from app.store.log import Appending, EventLog, Written

log = logging.getLogger(__name__)

FRAME = struct.Struct("!I")
"""Each message is its length, then a pickle."""

OK, CONFLICT, FAILED = "ok", "conflict", "failed"


class WriterUnavailable(Exception):
    """The writer process could not be reached, or went away before it answered: the
    batch's outcome is unknown (it may have committed)."""


class WriterFailed(Exception):
    """The writer process's transaction failed (its error, by name and message)."""


def frame(message: object) -> bytes:
    """``message`` as one length-prefixed frame."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(body)) + body


def serve_writes(engines: Engines, path: Path, until_eof: int) -> None:
    """Answer workers' group commits on the socket at ``path`` until the file descriptor
    ``until_eof`` reaches its end (the supervisor closed its end of the pipe, or died).

    One batch at a time, in arrival order across the workers: a batch's transaction holds
    the write lock (and the lock file the workers' own writes take turns at) only for its
    statements. Blocking; run it as a process's main work.
    """
    threads = engines.threads
    if threads is None:
        raise ValueError("the log writer process serves SQLite only")
    writer = EventLog(engines)
    listener = _listen(path)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(until_eof, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}
    log.info("log writer ready at %s", path)
    stopping = False
    try:
        while not stopping:
            for key, _ in sel.select():
                sock = key.fileobj
                if sock == until_eof:
                    stopping = not os.read(until_eof, 4096)
                    continue
                if sock is listener:
                    conn, _ = listener.accept()
                    sel.register(conn, selectors.EVENT_READ)
                    buffers[conn] = bytearray()
                    continue
                assert isinstance(sock, socket.socket)
                data = _recv(sock)
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    del buffers[sock]
                    continue
                buffer = buffers[sock]
                buffer += data
                for items in _messages(buffer):
                    answer = _commit(writer, threads, items)
                    with contextlib.suppress(OSError):  # (that worker is gone)
                        sock.sendall(frame(answer))
    finally:
        for sock in buffers:
            sock.close()
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        threads.close()


def _listen(path: Path) -> socket.socket:
    """Listen at ``path``; the name appears only once it accepts (so the supervisor can
    wait for it), replacing what a writer that died left there."""
    staged = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(staged))
    listener.listen(64)
    os.replace(staged, path)
    return listener


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except OSError:
        return b""


def _messages(buffer: bytearray) -> list[Any]:
    """The whole messages at the start of ``buffer``, taken out of it."""
    out = []
    while len(buffer) >= FRAME.size:
        (n,) = FRAME.unpack_from(buffer)
        if len(buffer) < FRAME.size + n:
            break
        out.append(pickle.loads(bytes(buffer[FRAME.size : FRAME.size + n])))
        del buffer[: FRAME.size + n]
    return out


def _commit(
    writer: EventLog, threads: SQLiteThreads, items: list[tuple[Any, ...]]
) -> tuple[str, Any]:
    """One worker's batch in one write transaction: ``(OK, Written)``, or why not."""
    batch = [Appending(request_id, payloads, new) for request_id, payloads, new in items]
    try:
        return OK, threads.run_transaction(lambda conn: writer.write_batch(conn, batch))
    except IntegrityError as exc:
        return CONFLICT, str(exc.orig)
    except Exception as exc:
        log.exception("group commit of %d appends failed in the log writer", len(batch))
        return FAILED, f"{type(exc).__name__}: {exc}"


class RemoteWriter:
    """A worker's end of the writer process: ``write`` commits a batch there.

    The log's writer task is its only caller, one batch at a time. A writer that is
    restarting is waited for (up to ``connect_timeout_s``) before anything is sent; one
    that goes away after a batch was sent leaves that batch's outcome unknown, and the
    batch fails with ``WriterUnavailable``.
    """

    def __init__(self, path: Path, *, connect_timeout_s: float = 10.0) -> None:
        self.path = path
        self.connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def write(self, batch: Sequence[Appending]) -> Written:
        """Commit ``batch`` in the writer process; what ``EventLog.write_batch`` returns."""
        reader, writer = await self._connection()
        try:
            writer.write(frame([(a.request_id, list(a.payloads), a.new) for a in batch]))
            (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
            kind, value = pickle.loads(await reader.readexactly(n))
        except (OSError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise WriterUnavailable(f"the log writer went away during a commit: {exc}") from exc
        if kind == CONFLICT:
            raise IntegrityError("group commit", None, Exception(value))
        if kind == FAILED:
            raise WriterFailed(value)
        written: Written = value
        return written

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            if not (self._reader.at_eof() or self._writer.is_closing()):
                return self._reader, self._writer
            await self.close()  # (that writer exited: nothing was sent to it since)
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(self.path)
                return self._reader, self._writer
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise WriterUnavailable(f"no log writer at {self.path}: {exc}") from exc
                await asyncio.sleep(0.05)  # (restarting: the supervisor starts a new one)

    async def close(self) -> None:
        """Close the connection (the next ``write`` opens a new one)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
