"""Shared fixtures: the asyncio backend for async tests, and a real service process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import ServiceProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start service processes on loopback ports; every one is stopped after the test."""
    started: list[ServiceProcess] = []

    def make(name: str = "genstream", **env: str) -> ServiceProcess:
        settings = {
            "GENSTREAM_DEMO_TOKEN_DELAY_MS": "1",
            "GENSTREAM_RATE_PER_MINUTE": "10000",
            **env,
        }
        service = ServiceProcess(tmp_path / f"{name}.db", settings)
        service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()
