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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError

from app.logcontext import configure_logging
from app.store.engine import Engines, SQLiteThreads, create_engines
from app.store.log import Appending, EventLog, Written

log = logging.getLogger(__name__)

FRAME = struct.Struct("!I")
"""Each message is its length, then a pickle."""

OK, CONFLICT, REFUSED, FAILED = "ok", "conflict", "refused", "failed"
"""The answers to a batch: committed; a conflict (the worker commits each append alone);
the database refused the transaction (locked past the busy timeout, disk full or
failing: an ``OperationalError`` in the worker, as in a process that commits itself);
any other failure."""

PING = "ping"
"""A message that is not a batch: answered ``(OK, None)`` without a transaction, once the
writer has answered what came before it. The supervisor's watchdog sends it."""


class WriterUnavailable(Exception):
    """The writer process could not be reached, or went away before it answered: the
    batch's outcome is unknown (it may have committed)."""


class WriterFailed(Exception):
    """The writer process's transaction failed (its error, by name and message)."""


def frame(message: object) -> bytes:
    """``message`` as one length-prefixed frame."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(body)) + body


LOG_WRITER_NICENESS = 10
"""How much the log writer lowers its scheduling priority. When the cores are busy, the
workers' event loops go first: at the same priority the writer took a core from them
whenever it ran, and new streams and resumes waited 100-230 ms at p99 where they waited
30-45 ms with it lowered; commits wait a little instead, which the workers' load
shedding sees (docs/benchmarks.md, "One log writer process")."""

DRAIN_S = 30.0
"""Once told to stop, how long the writer still serves the workers connected to it."""

SEND_TIMEOUT_S = 10.0
"""A worker that takes no answer for this long is cut off, so it cannot hold up the
others' commits."""


def serve_writes(engines: Engines, path: Path, until_eof: int) -> None:
    """Answer workers' group commits on the socket at ``path`` until the file descriptor
    ``until_eof`` reaches its end (the supervisor closed its end of the pipe, or died),
    and then until the workers connected to it have gone (at most ``DRAIN_S``).

    One batch at a time, in arrival order across the workers: a batch's transaction holds
    the write lock (and the lock file the workers' own writes take turns at) only for its
    own work. Blocking; run it as a process's main work.
    """
    threads = engines.threads
    if threads is None:
        raise ValueError("the log writer process serves SQLite only")
    event_log = EventLog(engines)
    listener = _listen(path)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listener")
    sel.register(until_eof, selectors.EVENT_READ, "until_eof")
    buffers: dict[socket.socket, bytearray] = {}

    def drop(sock: socket.socket) -> None:
        sel.unregister(sock)
        sock.close()
        del buffers[sock]

    log.info("log writer ready at %s", path)
    deadline: float | None = None  # (set once told to stop)
    try:
        while deadline is None or (buffers and time.monotonic() < deadline):
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.data == "until_eof":
                    if not os.read(until_eof, 4096):
                        sel.unregister(until_eof)
                        sel.unregister(listener)
                        listener.close()
                        deadline = time.monotonic() + DRAIN_S
                    continue
                if key.data == "listener":
                    conn, _ = listener.accept()
                    conn.settimeout(SEND_TIMEOUT_S)
                    sel.register(conn, selectors.EVENT_READ, "worker")
                    buffers[conn] = bytearray()
                    continue
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = _recv(sock)
                if not data:
                    drop(sock)
                    continue
                buffer = buffers[sock]
                buffer += data
                for items in messages(buffer):
                    try:
                        if items == PING:
                            sock.sendall(frame((OK, None)))
                        else:
                            sock.sendall(_answer(_commit(event_log, threads, items)))
                    except OSError:  # (that worker is gone, or takes no answers)
                        drop(sock)
                        break
    finally:
        for sock in buffers:
            sock.close()
        sel.close()
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


RECV_BYTES = 1 << 16
"""The most one read takes from a worker's socket; a larger frame arrives over several.
Each read allocates this much first. At 1 MiB every read mapped fresh memory, shrank it
to what came and unmapped it: three system calls and two page faults, about 24 us a read
against 4.5 at 64 KiB. Reads were 7% of the writer's time under load (docs/benchmarks.md,
"The log writer's reads")."""


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(RECV_BYTES)
    except OSError:
        return b""


def messages(buffer: bytearray) -> list[Any]:
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
    event_log: EventLog, threads: SQLiteThreads, items: list[tuple[Any, ...]]
) -> tuple[str, Any]:
    """One worker's batch in one write transaction: ``(OK, Written)``, or why not."""
    try:
        batch = [Appending(request_id, payloads, new) for request_id, payloads, new in items]
        return OK, threads.run_transaction(lambda conn: event_log.write_batch(conn, batch))
    except IntegrityError as exc:
        return CONFLICT, str(exc.orig)
    except OperationalError as exc:
        log.error("the database refused a group commit of %d appends: %s", len(items), exc.orig)
        return REFUSED, str(exc.orig)
    except Exception as exc:
        log.exception("group commit of %d appends failed in the log writer", len(items))
        return FAILED, f"{type(exc).__name__}: {exc}"


def _answer(answer: tuple[str, Any]) -> bytes:
    try:
        return frame(answer)
    except Exception as exc:  # (a rejection that does not pickle: a bug, said loudly)
        log.exception("the log writer could not send its answer")
        return frame((FAILED, f"the answer could not be sent: {type(exc).__name__}: {exc}"))


class RemoteWriter:
    """A worker's end of the writer process: ``write`` commits a batch there.

    The log's writer task is its only caller, one batch at a time. A writer that is
    restarting is waited for (up to ``connect_timeout_s``) before anything is sent. A batch
    the writer cannot have taken whole (the socket says it was closed before, or with
    the batch unread) is sent again to its replacement, which it waits for up to
    ``connect_timeout_s`` from then; a writer that goes away after it took a batch leaves
    that batch's outcome unknown, and the batch fails with ``WriterUnavailable``. (A
    writer that stops answering is the supervisor's watchdog's to end: a slow commit is
    waited for, as in a process that commits itself.)
    """

    def __init__(self, path: Path, *, connect_timeout_s: float = 10.0) -> None:
        self.path = path
        self.connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._out: asyncio.StreamWriter | None = None

    async def write(self, batch: Sequence[Appending]) -> Written:
        """Commit ``batch`` in the writer process; what ``EventLog.write_batch`` returns."""
        message = frame([(a.request_id, list(a.payloads), a.new) for a in batch])
        deadline: float | None = None  # (set when the writer is first found gone)
        while True:
            try:
                kind, value = await self._exchange(message)
                break
            except (BrokenPipeError, ConnectionResetError) as exc:
                # The writer never had the whole batch (it was gone when this was sent, or
                # went with the batch unread; it takes only whole ones): send it again, to
                # its replacement. (The batch may have waited long for the one that went,
                # a hung one that the watchdog ended, say: the wait starts now.)
                now = time.monotonic()
                deadline = deadline or now + self.connect_timeout_s
                if now >= deadline:
                    raise WriterUnavailable(f"the log writer takes no commits: {exc}") from exc
        if kind == CONFLICT:
            raise IntegrityError("group commit", None, Exception(value))
        if kind == REFUSED:
            raise OperationalError("group commit", None, Exception(value))
        if kind == FAILED:
            raise WriterFailed(value)
        written: Written = value
        return written

    async def _exchange(self, message: bytes) -> tuple[str, Any]:
        reader, out = await self._connection()
        try:
            out.write(message)
            (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
            answer: tuple[str, Any] = pickle.loads(await reader.readexactly(n))
            return answer
        except (BrokenPipeError, ConnectionResetError):
            await self.close()
            raise
        except (OSError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise WriterUnavailable(f"the log writer went away during a commit: {exc}") from exc
        except BaseException:
            # Cancelled (or worse) between a batch and its answer: the answer must not be
            # read as the next batch's.
            out.transport.abort()
            self._reader = self._out = None
            raise

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._out is not None:
            if not (self._reader.at_eof() or self._out.is_closing()):
                return self._reader, self._out
            await self.close()  # (that writer exited: nothing was sent to it since)
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                self._reader, self._out = await asyncio.open_unix_connection(self.path)
                return self._reader, self._out
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise WriterUnavailable(f"no log writer at {self.path}: {exc}") from exc
                await asyncio.sleep(0.05)  # (restarting: the supervisor starts a new one)

    async def close(self) -> None:
        """Close the connection (the next ``write`` opens a new one)."""
        out, self._reader, self._out = self._out, None, None
        if out is not None:
            out.close()
            with contextlib.suppress(OSError):
                await out.wait_closed()


def command(
    path: Path, url: str, synchronous: str, busy_timeout_ms: int, log_level: str
) -> list[str]:
    """The command line that starts a log writer process (what ``main`` reads)."""
    argv = [str(path), url, synchronous, str(busy_timeout_ms), log_level]
    return [sys.executable, "-m", "app.store.writer", *argv]


def main(argv: Sequence[str]) -> int:
    """The log writer process: ``python -m app.store.writer SOCKET DATABASE_URL
    SYNCHRONOUS BUSY_TIMEOUT_MS LOG_LEVEL``, as the supervisor starts it (with SIGINT and
    SIGTERM ignored from before it runs: ``supervisor.LogWriter.start``). It stops when
    its standard input ends: the supervisor closes it after the workers' last commits,
    or dies."""
    if len(argv) != 5:
        print(main.__doc__, file=sys.stderr)
        return 2
    path, url, synchronous, busy_ms, level = argv
    configure_logging(level)
    os.nice(LOG_WRITER_NICENESS)
    engines = create_engines(
        url,
        sqlite_synchronous=synchronous,
        sqlite_busy_timeout_ms=int(busy_ms),
        sqlite_workers=True,
    )
    serve_writes(engines, Path(path), until_eof=sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
