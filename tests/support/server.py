"""Runs the real service as a separate process on a loopback port against a SQLite file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def migrate(database_url: str) -> None:
    """``alembic upgrade head`` on ``database_url``, as scripts/serve does."""
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "GENSTREAM_DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


class ServiceProcess:
    """``genstream serve`` in a child process; start, kill -9, restart on the same file."""

    def __init__(
        self,
        db_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        migrated: bool = True,
        database_url: str | None = None,
    ) -> None:
        self.db_path = db_path
        self.database_url = database_url or f"sqlite+aiosqlite:///{db_path}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = db_path.with_suffix(".log")
        if migrated:
            migrate(self.database_url)

    def start(self, timeout_s: float = 20.0) -> None:
        env = {
            **os.environ,
            "GENSTREAM_HOST": "127.0.0.1",
            "GENSTREAM_PORT": str(self.port),
            "GENSTREAM_DATABASE_URL": self.database_url,
            "GENSTREAM_LOG_LEVEL": "warning",
            # Tests load the machine unevenly; only the load-shedding test opts in to it.
            "GENSTREAM_SHED_LAG_MS": "0",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited at start:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for readiness of a child process, not synchronising tests
        raise RuntimeError(f"service not ready after {timeout_s} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: the process dies with no chance to clean up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
