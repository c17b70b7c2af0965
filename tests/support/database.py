"""Statements run on a service's database behind its back: SQLite and PostgreSQL alike."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def execute(database_url: str, statement: str, **params: object) -> int:
    """Run one statement in a transaction of its own, through the app's async driver
    (aiosqlite or asyncpg: no synchronous PostgreSQL driver is installed); the number of
    rows it changed."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            return (await conn.execute(text(statement), params)).rowcount
    finally:
        await engine.dispose()
