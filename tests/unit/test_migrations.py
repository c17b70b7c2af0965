"""Migrations: head matches the table metadata, and downgrade to base works."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.store.tables import metadata

ROOT = Path(__file__).resolve().parents[2]


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
