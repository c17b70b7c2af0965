"""The group commit writes timestamps as text itself; it must be the text SQLAlchemy writes
and reads for the same column, or comparisons between the two would go wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from app.store.tables import requests, sqlite_datetime, sqlite_text

STORE = requests.c.created_at.type.dialect_impl(sqlite.dialect())


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC),  # no microseconds: still six digits
        datetime(2026, 11, 21, 12, 0, 0, 5, tzinfo=UTC),
        datetime(2026, 11, 21, 13, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1, minutes=30))),
    ],
)
def test_sqlite_text_is_what_sqlalchemy_stores_and_reads_back(value: datetime) -> None:
    bind = STORE.bind_processor(sqlite.dialect())
    result = STORE.result_processor(sqlite.dialect(), None)
    assert bind is not None and result is not None
    assert sqlite_text(value) == bind(value)
    assert result(sqlite_text(value)) == value


def test_text_order_is_time_order() -> None:
    start = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    times = [start + timedelta(microseconds=n) for n in (0, 1, 999_999, 1_000_000)]
    assert sorted(times, key=sqlite_text) == times


def test_sqlite_datetime_reads_the_text_back_with_or_without_microseconds() -> None:
    value = datetime(2026, 11, 21, 12, 0, 0, 5, tzinfo=UTC)
    assert sqlite_datetime(sqlite_text(value)) == value
    # As the driver's own adapter writes a whole second (a row written by another tool).
    assert sqlite_datetime("2026-11-21 12:00:00") == datetime(2026, 11, 21, 12, tzinfo=UTC)


def test_a_naive_datetime_is_refused_as_the_column_refuses_it() -> None:
    with pytest.raises(ValueError, match="naive"):
        sqlite_text(datetime(2026, 11, 21, 12, 0, 0))
