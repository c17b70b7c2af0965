"""The store contract suite runs against every backend named here.

SQLite always runs, twice: with the log's group commits on the process's own database
thread, and in a log writer process (``store/writer.py``, as ``genstream serve`` runs
one for its worker processes, and on uvloop, as they do). PostgreSQL joins when
GENSTREAM_TEST_POSTGRES_URL names a server (``scripts/test`` starts one); every test gets
a fresh database on it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from app.store.engine import Engines, create_engines
from app.store.log import EventLog
from app.store.queue import WorkQueue
from app.store.writer import RemoteWriter
from app.store.writer import command as writer_command
from tests.support.postgres import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("GENSTREAM_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "sqlite-log-writer"] + (["postgresql"] if POSTGRES_URL else [])


def migrate(url: str, target: str = "head") -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    if target == "base":
        command.downgrade(config, "base")
    else:
        command.upgrade(config, target)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path / 'contract.db'}"
        migrate(url)
        yield url
        return
    url = create_database()
    migrate(url)
    yield url
    drop_database(url)


def through_log_writer(request: pytest.FixtureRequest) -> bool:
    """Whether this test's backend is SQLite with the log writer process."""
    return bool(request.node.callspec.params.get("database_url") == "sqlite-log-writer")


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """The event loop: with the log writer, uvloop's, as in the workers that run one
    (its transports are not asyncio's classes, and the writer's client must work on
    them); otherwise asyncio's own."""
    return "asyncio", {"use_uvloop": through_log_writer(request)}


@pytest.fixture
async def engines(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Engines]:
    # (With the log writer, as in a worker: writes take turns at the lock file.)
    engines = create_engines(database_url, sqlite_workers=through_log_writer(request))
    yield engines
    await engines.dispose()


@pytest.fixture
def remote(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[RemoteWriter | None]:
    """For ``EventLog(remote=...)``: a log writer process's client, or None."""
    if not through_log_writer(request):
        yield None
        return
    with log_writer(database_url, tmp_path / "log.sock") as socket:
        yield RemoteWriter(socket)


@pytest.fixture
async def log(engines: Engines, remote: RemoteWriter | None) -> AsyncIterator[EventLog]:
    event_log = EventLog(engines, batch_max=256, remote=remote)
    await event_log.start()
    yield event_log
    await event_log.close()


@contextlib.contextmanager
def log_writer(url: str, socket: Path) -> Iterator[Path]:
    """A log writer process for the database at ``url``, as the supervisor starts one."""
    argv = writer_command(socket, url, "NORMAL", 5000, "warning")
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():  # (it appears once the writer accepts)
            assert time.monotonic() < deadline, "the log writer did not start"
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.02)
                raise AssertionError("the log writer exited while starting")
        yield socket
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(timeout=30) == 0, "the log writer stops once its input closes"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def queue(engines: Engines) -> WorkQueue:
    return WorkQueue(engines, owner="test-node")
