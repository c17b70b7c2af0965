"""Fresh PostgreSQL databases for tests, on the server GENSTREAM_TEST_POSTGRES_URL names."""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

import asyncpg

ADMIN_URL = os.environ.get("GENSTREAM_TEST_POSTGRES_URL", "")


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _execute(sql: str) -> None:
    conn = await asyncpg.connect(_dsn(ADMIN_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin(sql: str) -> None:
    """Run one admin statement on its own loop in a worker thread: callers may already be
    inside a running event loop (async tests)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _execute(sql)).result()


def create_database() -> str:
    """A new, empty database; returns its SQLAlchemy URL."""
    name = f"genstream_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"')
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    """Drop a database made by ``create_database`` (closing its connections)."""
    name = url.rsplit("/", 1)[1]
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
