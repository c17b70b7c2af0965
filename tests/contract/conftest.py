"""The store contract suite runs against every backend named here.

SQLite always runs. PostgreSQL joins when GENSTREAM_TEST_POSTGRES_URL names a server
(``scripts/test`` starts one); every test gets a fresh database on it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from app.store.engine import Engines, create_engines
from app.store.log import EventLog
from app.store.queue import WorkQueue
from tests.support.postgres import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("GENSTREAM_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


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
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'contract.db'}"
        migrate(url)
        yield url
        return
    url = create_database()
    migrate(url)
    yield url
    drop_database(url)


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[Engines]:
    engines = create_engines(database_url)
    yield engines
    await engines.dispose()


@pytest.fixture
async def log(engines: Engines) -> AsyncIterator[EventLog]:
    event_log = EventLog(engines, batch_max=256)
    await event_log.start()
    yield event_log
    await event_log.close()


@pytest.fixture
def queue(engines: Engines) -> WorkQueue:
    return WorkQueue(engines, owner="test-node")
