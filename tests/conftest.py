"""Shared fixtures: the asyncio backend for async tests, and real service processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.postgres import ADMIN_URL as POSTGRES_URL
from tests.support.postgres import create_database, drop_database
from tests.support.server import ServiceProcess

BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
"""Modules opt in to every backend with ``pytest.mark.parametrize("backend", BACKENDS,
indirect=True)``; PostgreSQL joins when GENSTREAM_TEST_POSTGRES_URL is set (scripts/test)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The database the services of a test run on."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def empty_database_url(backend: str) -> Iterator[str | None]:
    """For a ServiceProcess the test makes itself: a PostgreSQL database with no tables
    yet, dropped after the test; None on SQLite, where the process's own file is used."""
    if backend != "postgresql":
        yield None
        return
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def service_factory(tmp_path: Path, backend: str) -> Iterator[Callable[..., ServiceProcess]]:
    """Start service processes on loopback ports; every one is stopped after the test.

    Services made with the same ``name`` share one database: several nodes of one log.
    """
    started: list[ServiceProcess] = []
    databases: dict[str, str | None] = {}

    def make(name: str = "genstream", **env: str) -> ServiceProcess:
        settings = {
            "GENSTREAM_DEMO_TOKEN_DELAY_MS": "1",
            "GENSTREAM_RATE_PER_MINUTE": "10000",
            **env,
        }
        first = name not in databases
        if first:
            databases[name] = create_database() if backend == "postgresql" else None
        service = ServiceProcess(
            tmp_path / f"{name}.db",
            settings,
            database_url=databases[name],
            migrated=first,
        )
        if not first:  # another node of the same log: its own log file
            service.log_path = tmp_path / f"{name}-{len(started)}.log"
        service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()
    for url in databases.values():
        if url is not None:
            drop_database(url)
