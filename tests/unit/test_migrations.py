"""Migrations: head matches the table metadata, and downgrade to base works."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.domain.events import StoredEvent
from app.domain.invariants import stream_problems
from app.store.engine import create_engines
from app.store.integrity import Finding, check
from app.store.tables import metadata

ROOT = Path(__file__).resolve().parents[2]
T = datetime(2026, 11, 21, tzinfo=UTC)


async def verify_log(url: str) -> list[Finding]:
    engines = create_engines(url)
    try:
        return await check(engines)
    finally:
        await engines.dispose()


def alembic_config(db: Path) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{db}")
    config.attributes["configure_logger"] = False
    return config


def test_upgrade_head_matches_metadata_and_downgrade_empties(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    config = alembic_config(db)
    command.upgrade(config, "head")
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
            )
            assert diff == []
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        command.upgrade(config, "head")
        assert {"events", "requests"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0002_backfills_parent_request_id_from_created_events(tmp_path: Path) -> None:
    db = tmp_path / "populated.db"
    config = alembic_config(db)
    command.upgrade(config, "0001")
    engine = create_engine(f"sqlite:///{db}")
    at = "2026-11-21 03:00:00.000000"
    rows = [
        ("a", '{"mode":"chat","prompt":"p","track_id":null,"context":{},"model":"m"}'),
        ("b", '{"mode":"chat","prompt":"p","context":{},"model":"m","parent_request_id":"a"}'),
    ]
    try:
        with engine.begin() as conn:
            for rid, data in rows:
                conn.exec_driver_sql(
                    "INSERT INTO requests (request_id, user_id, mode, status, last_seq, "
                    "created_at, updated_at) VALUES (?, 'u', 'chat', 'completed', 2, ?, ?)",
                    (rid, at, at),
                )
                conn.exec_driver_sql(
                    "INSERT INTO events (request_id, seq, type, v, data, at) VALUES "
                    "(?, 1, 'created', 1, ?, ?), (?, 2, 'complete', 1, '{\"content\":\"\"}', ?)",
                    (rid, data, at, rid, at),
                )
            before = conn.exec_driver_sql("SELECT * FROM events ORDER BY id").all()
        command.upgrade(config, "head")
        with engine.connect() as conn:
            parents = dict(
                conn.exec_driver_sql("SELECT request_id, parent_request_id FROM requests").all()
            )
            assert parents == {"a": None, "b": "a"}
            assert conn.exec_driver_sql("SELECT * FROM events ORDER BY id").all() == before
        # Every invariant, and the read model against the events, hold after the upgrade.
        assert asyncio.run(verify_log(f"sqlite+aiosqlite:///{db}")) == []
        command.downgrade(config, "0001")
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("requests")}
            assert "parent_request_id" not in columns
            assert conn.exec_driver_sql("SELECT * FROM events ORDER BY id").all() == before
            # The log's invariants still hold at the old schema (checked on the raw rows).
            rows = conn.exec_driver_sql(
                "SELECT id, request_id, seq, type, data FROM events ORDER BY request_id, seq"
            ).all()
        for rid in ("a", "b"):
            stored = [
                StoredEvent(
                    id=r.id, request_id=rid, seq=r.seq, type=r.type, at=T, data=r.data.encode()
                )
                for r in rows
                if r.request_id == rid
            ]
            assert stream_problems(stored) == []
    finally:
        engine.dispose()
