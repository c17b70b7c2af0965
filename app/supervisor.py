"""``genstream serve`` with several worker processes (``GENSTREAM_WORKERS``).

One Python process runs one core's worth of Python at a time, so past that, a second
process is the way to use a second core. The supervisor binds the listening socket once
and starts each worker (``genstream serve`` again) with it: the workers accept from the
same queue of connections, so a busy worker leaves new ones to the others. Each worker
serves HTTP and runs generations on the shared database; on SQLite they ship each other
their commits (``store/peers.py``), and one more process, the log writer, runs every
worker's group commits (``store/writer.py``): it is started first, replaced if it dies,
and stopped last, once the workers have committed their final events.

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
import time
from pathlib import Path
from types import FrameType

from app.api.app import build_services, schema_problem, started_marker
from app.logcontext import configure_logging
from app.settings import Settings
from app.store.engine import create_engines
from app.store.writer import serve_writes

log = logging.getLogger(__name__)

WORKER_FD = "GENSTREAM_WORKER_FD"
"""Set for a worker: the listening socket it inherited from the supervisor."""

LOG_WRITER_NICENESS = 10
"""How much the log writer lowers its scheduling priority. When the cores are busy, the
workers' event loops go first: at the same priority the writer took a core from them
whenever it ran, and new streams and resumes waited 100-230 ms at p99 where they waited
30-45 ms with it lowered; commits wait a little instead, which the workers' load
shedding sees (docs/benchmarks.md, "One log writer process")."""


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
        writer = LogWriter(peer_dir / "log-writer" / "log.sock")
        env["GENSTREAM_WRITER_SOCKET"] = str(writer.path)
    stopping = False

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command, env=env, pass_fds=[listener.fileno()], preexec_fn=_die_with_parent
        )

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        if writer is not None and not writer.start():
            return 1
        workers.extend(start() for _ in range(settings.workers))
        log.info("started %d workers", settings.workers)
        while not stopping:
            time.sleep(0.5)  # (a signal ends the wait early: its handler sets ``stopping``)
            if writer is not None and not stopping and (code := writer.exited()) is not None:
                log.warning("the log writer exited with %d; replacing it", code)
                writer.start()
            for n, process in enumerate(workers):
                code = process.poll()
                if code is None or stopping:
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
        deadline = time.monotonic() + settings.shutdown_grace_s + 20.0
        for process in workers:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
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

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> bool:
        """Start it and wait until it accepts; False (and it is stopped) if it does not."""
        self.stop()  # (one that died: its pipe)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # (what one that died left: the workers wait for the new one)
        command = [sys.executable, "-m", "app.supervisor", "log-writer", str(self.path)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while not self.path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log.error("the log writer did not start")
                self.stop()
                return False
            time.sleep(0.02)
        return True

    def exited(self) -> int | None:
        """Its exit status, once it has exited."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        """Stop it (after the workers: their last commits go through it) and wait."""
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


def run_log_writer(settings: Settings, path: Path) -> int:
    """The log writer process's main work (``python -m app.supervisor log-writer PATH``)."""
    os.nice(LOG_WRITER_NICENESS)
    engines = create_engines(
        settings.database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        sqlite_workers=True,
    )
    # Signals to the whole process group (Ctrl-C, a service manager's stop) reach it with
    # the workers, which still commit their last events: it stops when the supervisor
    # closes its standard input, after the workers, or when the supervisor dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve_writes(engines, path, until_eof=sys.stdin.fileno())
    return 0


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


def _die_with_parent() -> None:
    """In a new worker: have Linux stop it if the supervisor dies without stopping it."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


if __name__ == "__main__":
    if sys.argv[1:2] != ["log-writer"] or len(sys.argv) != 3:
        sys.exit("usage: python -m app.supervisor log-writer SOCKET")
    _settings = Settings.from_env()
    configure_logging(_settings.log_level)
    sys.exit(run_log_writer(_settings, Path(sys.argv[2])))
