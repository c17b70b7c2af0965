"""``genstream serve`` with several worker processes (``GENSTREAM_WORKERS``).

One Python process runs one core's worth of Python at a time, so past that, a second
process is the way to use a second core. The supervisor binds the listening socket once
and starts each worker (``genstream serve`` again) with it: the workers accept from the
same queue of connections, so a busy worker leaves new ones to the others. Each worker
serves HTTP and runs generations on the shared database; on SQLite they take turns on
its write lock and ship each other their commits (``store/peers.py``).

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
from app.settings import Settings

log = logging.getLogger(__name__)

WORKER_FD = "GENSTREAM_WORKER_FD"
"""Set for a worker: the listening socket it inherited from the supervisor."""


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` worker processes until interrupted; the exit status."""
    if (recovered := asyncio.run(recover(settings))) != 0:
        return recovered
    listener = bind(settings.host, settings.port)
    peer_dir = Path(tempfile.mkdtemp(prefix="genstream-workers-"))
    env = {**os.environ, WORKER_FD: str(listener.fileno()), "GENSTREAM_PEER_DIR": str(peer_dir)}
    command = [sys.executable, "-m", "app.cli", "serve"]
    workers: list[subprocess.Popen[bytes]] = []
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
        workers.extend(start() for _ in range(settings.workers))
        log.info("started %d workers", settings.workers)
        while not stopping:
            time.sleep(0.5)  # (a signal ends the wait early: its handler sets ``stopping``)
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
        listener.close()
        shutil.rmtree(peer_dir, ignore_errors=True)
    return status


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
