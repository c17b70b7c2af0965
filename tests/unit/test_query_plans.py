"""The audit queries use the indexes of migration 0004, and the rate limit's count the
index of 0005, and the group commit's reads theirs (SQLite query plans)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Select, create_engine
from sqlalchemy.dialects import sqlite

from app.store import sqlite_sql
from app.store.audit import EventQuery, RequestQuery, events_select, requests_select
from app.store.log import rate_window

ROOT = Path(__file__).resolve().parents[2]
T = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = tmp_path_factory.mktemp("plans") / "plans.db"
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{db}")
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    return f"sqlite:///{db}"


def plan(database: str, statement: Select[tuple[object, ...]]) -> str:
    sql = statement.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
    finally:
        engine.dispose()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (EventQuery(type="error"), "ix_events_type_id"),
        # The UNIQUE(request_id, seq) constraint's index, as SQLite names it.
        (EventQuery(request_id="01900000-0000-7000-8000-000000000000"), "(request_id=?)"),
        (EventQuery(user_id="alice"), "ix_requests_user_id"),
    ],
)
def test_event_filters_use_an_index(database: str, query: EventQuery, index: str) -> None:
    assert index in plan(database, events_select(query))


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (RequestQuery(user_id="alice"), "ix_requests_user_id"),
        (RequestQuery(track_id="site-1"), "ix_requests_track_id"),
        (RequestQuery(status="failed"), "ix_requests_status_created_at"),
        (RequestQuery(since=T), "ix_requests_created_at"),
    ],
)
def test_request_filters_use_an_index(database: str, query: RequestQuery, index: str) -> None:
    assert index in plan(database, requests_select(query))


def test_the_rate_limit_counts_from_the_index_alone(database: str) -> None:
    """Admission counts a user's requests of the last minute inside the write transaction:
    from the covering index, in group order, with no table lookup and no sort."""
    found = plan(database, rate_window(["alice", "bob"], ["chat", "generate"], T))
    assert "COVERING INDEX ix_requests_user_id_mode_created_at" in found
    assert "TEMP B-TREE" not in found


def raw_plan(database: str, sql: str, markers: int) -> str:
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ("x",) * markers).all()
    finally:
        engine.dispose()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize(
    ("sql", "markers", "index"),
    [
        (sqlite_sql.heads_sql(3), 3, "INDEX sqlite_autoindex_requests_1 (request_id=?)"),
        (sqlite_sql.QUEUED, 0, "COVERING INDEX ix_requests_status_created_at (status=?)"),
        (sqlite_sql.active_sql(2), 4, "COVERING INDEX ix_requests_user_id_status"),
        (
            sqlite_sql.recent_sql(2, 1),
            4,
            "COVERING INDEX ix_requests_user_id_mode_created_at (user_id=? AND mode=? AND "
            "created_at>?)",
        ),
    ],
)
def test_the_group_commits_reads_on_sqlite_use_an_index(
    database: str, sql: str, markers: int, index: str
) -> None:
    """The batch's heads and admission's counts, read inside the write transaction as
    plain statements: each from an index, none with a sort."""
    found = raw_plan(database, sql, markers)
    assert index in found
    assert "TEMP B-TREE" not in found
    assert "SCAN requests" not in found


def test_a_streams_backlog_on_sqlite_is_read_from_its_unique_index(database: str) -> None:
    """The page a stream reads on the event loop: a range of one index, no sort."""
    found = raw_plan(database, sqlite_sql.EVENTS_AFTER, 3)
    assert "INDEX sqlite_autoindex_events_1 (request_id=? AND seq>?)" in found
    assert "TEMP B-TREE" not in found


def test_a_claim_on_sqlite_finds_the_oldest_queued_from_the_status_index(database: str) -> None:
    """Only ties on ``created_at`` are sorted (by request ID); the queue is never scanned."""
    found = raw_plan(database, sqlite_sql.CLAIM, 3)
    assert "INDEX ix_requests_status_created_at (status=?)" in found
    assert "SCAN requests" not in found
    found = raw_plan(database, sqlite_sql.firsts_sql(2), 2)
    assert "(request_id=? AND seq=?)" in found
    assert "SCAN events" not in found
