"""``genstream serve`` with several worker processes (``GENSTREAM_WORKERS``).

One Python process runs one core's worth of Python at a time, so past that, a second
process is the way to use a second core. The supervisor binds the listening socket once
and starts each worker (``genstream serve`` again) with it: the workers accept from the
same queue of connections, so a busy worker leaves new ones to the others. Each worker
serves HTTP and runs generations on the shared database; on SQLite they ship each other
their commits (``store/peers.py``), and one more process, the log writer, runs every
worker's group commits (``store/writer.py``): it is started first, replaced if it dies
or hangs (the supervisor pings it), and stopped last, once the workers have committed
their final events.

Before any worker starts, the supervisor recovers what an earlier run left behind, as a
single process does at start-up. Afterwards a worker that dies is replaced, and the
generations it ran are ended as interrupted by the others once their leases expire, as
for a PostgreSQL node. On SIGINT or SIGTERM it stops the workers, each ending its
streams and giving its running generations the shutdown grace, and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from app.api.app import build_services, schema_problem, started_marker
from app.settings import Settings
from app.store.writer import PING, frame, messages
from app.store.writer import command as writer_command

log = logging.getLogger(__name__)

WORKER_FD = "GENSTREAM_WORKER_FD"
"""Set for a worker: the listening socket it inherited from the supervisor."""

PING_FRAME = frame(PING)

MAX_FAILED_STARTS = 3
"""A log writer that fails to start this many times in a row stops the service."""


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` worker processes until interrupted; the exit status."""
    if (recovered := asyncio.run(recover(settings))) != 0:
        return recovered
    listener = bind(settings.host, settings.port)
    peer_dir = Path(tempfile.mkdtemp(prefix="genstream-workers-"))
    env = {**os.environ, WORKER_FD: str(listener.fileno()), "GENSTREAM_PEER_DIR": str(peer_dir)}
    command = [sys.executable, "-m", "app.cli", "serve"]
    workers: list[subprocess.Popen[bytes]] = []
    writer: LogWriter | None = None
    if settings.database_url.startswith("sqlite"):
        # (In a directory of its own: the workers take every ``*.sock`` of theirs as a peer.)
        (peer_dir / "log-writer").mkdir(mode=0o700)
        writer = LogWriter(peer_dir / "log-writer" / "log.sock", settings)
        env["GENSTREAM_WRITER_SOCKET"] = str(writer.path)
    stopping = threading.Event()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command, env=env, pass_fds=[listener.fileno()], preexec_fn=_die_with_parent
        )

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        if writer is not None and not writer.start():
            return 1
        if stopping.is_set():  # (asked to stop while the writer started)
            return status
        workers.extend(start() for _ in range(settings.workers))
        log.info("started %d workers", settings.workers)
        while not stopping.is_set():
            time.sleep(0.5)  # (a signal's handler sets ``stopping``)
            if writer is not None and not stopping.is_set() and not writer.tend():
                log.error("the log writer failed to start %d times; stopping", MAX_FAILED_STARTS)
                status = 1
                stop(signal.SIGTERM, None)
            for n, process in enumerate(workers):
                code = process.poll()
                if code is None or stopping.is_set():
                    continue
                if code >= 0 and not started_marker(peer_dir, process.pid).exists():
                    # It gave up before serving (a schema not migrated, say): so would
                    # every replacement. (One killed by a signal is replaced.)
                    log.error("worker %d exited with %d while starting; stopping", n, code)
                    status = code or 1
                    stop(signal.SIGTERM, None)
                    break
                log.warning("worker %d (pid %d) exited with %d; replacing it", n, process.pid, code)
                workers[n] = start()
        # The workers' last commits (the generations they end as interrupted) go through
        # the log writer: one that dies or hangs meanwhile is replaced as before.
        deadline = time.monotonic() + settings.shutdown_grace_s + 20.0
        while any(p.poll() is None for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
            if writer is not None and writer.failed_starts < MAX_FAILED_STARTS:
                writer.tend()
        for process in workers:
            if process.poll() is None:
                log.warning("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
            process.wait()
    finally:
        if writer is not None:
            writer.stop()
        listener.close()
        shutil.rmtree(peer_dir, ignore_errors=True)
    return status


class LogWriter:
    """The log writer process (``store/writer.py``), as the supervisor runs it."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.failed_starts = 0
        """Starts in a row that did not come up."""
        self._probe: socket.socket | None = None
        """The watchdog's connection to it, as a worker's."""
        self._pinged_at: float | None = None
        """When the ping it has not answered yet was sent."""
        self._answer = bytearray()

    def tend(self) -> bool:
        """Watch it (``watch``), and start a new one if it exited; False once it has
        failed to start ``MAX_FAILED_STARTS`` times in a row."""
        self.watch(time.monotonic())
        if (code := self.exited()) is None:
            return True
        log.warning("the log writer exited with %d; replacing it", code)
        return self.start() or self.failed_starts < MAX_FAILED_STARTS

    def watch(self, now: float) -> None:
        """Ping it, or see whether it answered; kill it when a ping has gone unanswered
        for ``writer_watchdog_s``. A writer answers its connections' messages in order, one
        at a time, so one that answers nothing for that long is hung (stopped, or stuck
        past any lock wait), and the commits of every worker wait on it. Once killed it has
        exited, and is replaced like one that died: a batch it had not read is sent to the
        replacement, one it had read fails in its worker as of unknown outcome."""
        if self.process is None or self.process.poll() is not None:
            return
        if self._pinged_at is not None and not self._answered():
            if now - self._pinged_at >= self.settings.writer_watchdog_s:
                log.error(
                    "the log writer (pid %d) answered nothing for %.0f s; killing it",
                    self.process.pid,
                    now - self._pinged_at,
                )
                self._close_probe()
                self.process.kill()
                self.process.wait()
            return
        try:
            if self._probe is None:
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._probe = probe
                probe.setblocking(False)
                probe.connect(str(self.path))  # (a listening Unix socket: at once)
            self._probe.send(PING_FRAME)  # (a few bytes into an empty buffer: whole)
            self._pinged_at = now
        except OSError:  # (it is going: ``exited`` will say)
            self._close_probe()

    def _answered(self) -> bool:
        """Whether the ping's answer has arrived (a writer that closed the connection
        counts: it exits, and ``exited`` says so)."""
        assert self._probe is not None
        try:
            data = self._probe.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close_probe()
            return True
        self._answer += data
        if not messages(self._answer):
            return False  # (not whole yet)
        self._pinged_at = None
        return True

    def _close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
        self._probe, self._pinged_at = None, None
        self._answer.clear()

    def start(self, timeout_s: float = 30.0) -> bool:
        """Start it and wait until it accepts; False (and it is stopped) if it does not."""
        self.stop()  # (one that died: its pipe)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # (what one that died left: the workers wait for the new one)
        s = self.settings
        argv = writer_command(
            self.path, s.database_url, s.sqlite_synchronous, s.sqlite_busy_timeout_ms, s.log_level
        )
        # Ignoring SIGINT and SIGTERM from before it starts (ignored signals stay ignored
        # across exec), so that a terminal's Ctrl-C or a service manager's stop, which
        # reach every process of the service, leave it to the workers' last commits. Not
        # a session of its own: with the kernel's autogroup scheduling, a session is a
        # scheduling group, and the writer's lower priority would count for nothing
        # against the workers' (docs/benchmarks.md, "One log writer process").
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, preexec_fn=_ignore_stop_signals
        )
        deadline = time.monotonic() + timeout_s
        while not self.path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log.error("the log writer did not start")
                self.stop()
                self.failed_starts += 1
                return False
            time.sleep(0.02)
        self.failed_starts = 0
        return True

    def exited(self) -> int | None:
        """Its exit status, once it has exited."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        """Stop it (after the workers: their last commits go through it) and wait."""
        self._close_probe()  # (it serves its connections before it exits)
        if self.process is None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()  # (its signal to finish)
        if self.process.poll() is not None:
            return
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("the log writer did not stop in time; killing it")
            self.process.kill()
            self.process.wait()


async def recover(settings: Settings) -> int:
    """End what an earlier run left running, before any worker starts; 0 when done."""
    svc = build_services(settings)
    try:
        if (message := await schema_problem(svc)) is not None:
            log.error(message)
            return 3
        await svc.log.start()
        try:
            await svc.pool.recover()
        finally:
            await svc.log.close()
    finally:
        await svc.provider.aclose()
        await svc.engines.dispose()
    return 0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _ignore_stop_signals() -> None:
    """In a new log writer, before it runs: SIGINT and SIGTERM are not for it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _die_with_parent() -> None:
    """In a new worker: have Linux stop it if the supervisor dies without stopping it."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
