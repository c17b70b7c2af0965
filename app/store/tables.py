"""The log's tables: the only metadata Alembic sees."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive ISO text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_text(value: datetime) -> str:
    """The text SQLite holds for a ``UTCDateTime`` (SQLAlchemy's storage format for it), for
    statements that bypass the column type."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def sqlite_datetime(text: str) -> datetime:
    """A ``UTCDateTime`` from the text SQLite holds for it (with or without microseconds)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# SQLite only auto-assigns an INTEGER PRIMARY KEY (the rowid); other backends get BIGINT.
EventId = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("request_id", String(36), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", String(32), nullable=False),
    Column("v", SmallInteger, nullable=False),
    Column("data", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    UniqueConstraint("request_id", "seq"),
    Index(None, "at"),
    Index(None, "type", "id"),
)

requests = Table(
    "requests",
    metadata,
    Column("request_id", String(36), primary_key=True),
    Column("user_id", String(128), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("track_id", String(128), nullable=True, index=True),
    Column("element_id", String(256), nullable=True),
    Column("status", String(16), nullable=False),
    Column("last_seq", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("parent_request_id", String(36), nullable=True, index=True),
    UniqueConstraint("user_id", "idempotency_key"),
    Index(None, "status", "created_at"),
    Index(None, "user_id", "status"),
    Index(None, "user_id", "created_at"),
    Index(None, "user_id", "mode", "created_at"),
    Index(None, "created_at"),
)

# Tombstones of requests removed by retention: reads answer 410 Gone rather than 404.
purged_requests = Table(
    "purged_requests",
    metadata,
    Column("request_id", String(36), primary_key=True),
    Column("user_id", String(128), nullable=False),
    Column("purged_at", UTCDateTime, nullable=False),
)
