"""The processes the harness starts: the service, the relay, the profiler, the host probe.

Every child is registered as it starts and stopped by :func:`stop_all` (SIGTERM, then
SIGKILL after a grace period), which the command line calls on any exit, Ctrl-C
included. Children run in their own session so that a terminal's Ctrl-C reaches only the
harness, which then stops them in order (but the host probe, which stays in the
harness's session and stops with it); and the kernel sends them SIGTERM should the
harness itself die without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from scripts.benchlib import users
from scripts.benchlib.httpclient import Connection, ProtocolError

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1
PROFILE_HZ = 100
_children: list[Child] = []


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _lowest_priority() -> None:  # runs in the child between fork and exec
    _die_with_parent()
    os.nice(19)


class Child:
    """One started process, its log file, and how to stop it. ``background``: at the lowest
    priority, in this process's session, so that it shares the harness's scheduling group
    (with the kernel's autogroup scheduling each session is one, as weighty as the
    service's, and priorities order processes only within it); otherwise in a session of
    its own."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log: Path,
        *,
        background: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=not background,
                preexec_fn=_lowest_priority if background else _die_with_parent,
            )
        _children.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> int | None:
        """Signal the process, wait up to ``grace_s``, then SIGKILL; the exit code."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if self in _children:
            _children.remove(self)
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        """The end of the process's log, for error messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all() -> None:
    """Stop every child still running, newest first."""
    for child in reversed(list(_children)):
        child.stop()


def migrate(database_url: str, log: Path) -> None:
    """``alembic upgrade head`` on a fresh database, as scripts/serve does."""
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env={**os.environ, "GENSTREAM_DATABASE_URL": database_url},
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
        )


def service_env(
    port: int, database_url: str, pace_ms: float, runners: int, workers: int = 1
) -> dict[str, str]:
    """The service's settings for a run: demo pace, one user per slot (``users.py``), and
    per-user limits above what a slot offers."""
    return {
        **os.environ,
        "GENSTREAM_HOST": HOST,
        "GENSTREAM_PORT": str(port),
        "GENSTREAM_DATABASE_URL": database_url,
        "GENSTREAM_PROVIDER": "demo",
        "GENSTREAM_DEMO_TOKEN_DELAY_MS": str(pace_ms),
        "GENSTREAM_RUNNERS": str(runners),
        "GENSTREAM_WORKERS": str(workers),
        "GENSTREAM_JWT_SECRET": users.SECRET,
        "GENSTREAM_MAX_ACTIVE_PER_USER": str(users.MAX_ACTIVE_PER_USER),
        "GENSTREAM_RATE_PER_MINUTE": str(users.RATE_PER_MINUTE),
        "GENSTREAM_LOG_LEVEL": "warning",
    }


def start_service(
    workdir: Path, pace_ms: float, runners: int, workers: int = 1
) -> tuple[Child, int]:
    """A fresh SQLite file, migrated, and ``python -m app.cli serve`` on a free port."""
    database_url = f"sqlite+aiosqlite:///{workdir / 'genstream.db'}"
    log = workdir / "service.log"
    migrate(database_url, log)
    port = free_port()
    env = service_env(port, database_url, pace_ms, runners, workers)
    argv = [sys.executable, "-m", "app.cli", "serve"]
    return Child("service", argv, env, log), port


def start_relay(workdir: Path, scripts: Path) -> tuple[Child, int]:
    """The non-durable relay on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "scripts.benchlib.relay", "--port", str(port)]
    argv += ["--scripts", str(scripts)]
    return Child("relay", argv, os.environ, workdir / "relay.log"), port


def start_host_probe(start: float, end: float, out: Path) -> Child:
    """``hostspeed`` timing its fixed work every two seconds from wall-clock time ``start``
    to ``end``, one figure (ms of CPU) a line in ``out`` (emptied first); in the
    background, where its pauses, not its priority, keep it to about 2% of a core (its
    scheduling group is the harness's, which the service's does not outrank)."""
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "scripts.benchlib.hostspeed", f"{start:.3f}", f"{end:.3f}"]
    return Child("host probe", argv, os.environ, out, background=True)


def start_profiler(
    pid: int, seconds: float, out: Path, *, subprocesses: bool = False
) -> Child | None:
    """py-spy sampling ``pid`` for ``seconds`` (raw collapsed stacks); None without py-spy."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        return None
    # --gil: sample only the thread holding the GIL, i.e. what keeps the one core busy that
    # a Python process can use; idle waits (epoll, queue gets, SQLite I/O) drop out.
    argv = [str(exe), "record", "--pid", str(pid), "--rate", str(PROFILE_HZ), "--format", "raw"]
    argv += ["--gil", "--nonblocking", "--duration", str(max(1, round(seconds)))]
    argv += ["--output", str(out)] + (["--subprocesses"] if subprocesses else [])
    return Child("py-spy", argv, os.environ, out.with_suffix(".log"))


async def wait_ready(child: Child, port: int, path: str = "/ready", timeout_s: float = 60) -> None:
    """Poll ``path`` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.running():
            raise RuntimeError(f"{child.name} exited at start:\n{child.tail()}")
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ProtocolError):
            conn = await Connection.open(HOST, port)
            try:
                head, _ = await conn.request("GET", path)
            finally:
                conn.abort()
            if head.status == 200:
                return
        await asyncio.sleep(0.1)  # polling a child process for readiness
    raise RuntimeError(f"{child.name} not ready after {timeout_s} s:\n{child.tail()}")


async def get_json_bytes(
    port: int, path: str, headers: list[tuple[str, str]] | None = None
) -> tuple[int, bytes]:
    """One GET on a fresh connection: status and body."""
    conn = await Connection.open(HOST, port)
    try:
        head, body = await conn.request("GET", path, headers or ())
    finally:
        conn.abort()
    return head.status, body
