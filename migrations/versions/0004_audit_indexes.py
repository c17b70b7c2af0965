"""Indexes for the audit queries: events by time and type, requests by user, track, mode.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_type_id", "events", ["type", "id"])
    op.create_index("ix_requests_user_id_created_at", "requests", ["user_id", "created_at"])
    op.create_index("ix_requests_track_id", "requests", ["track_id"])
    op.create_index("ix_requests_created_at", "requests", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_created_at", table_name="requests")
    op.drop_index("ix_requests_track_id", table_name="requests")
    op.drop_index("ix_requests_user_id_created_at", table_name="requests")
    op.drop_index("ix_events_type_id", table_name="events")
    op.drop_index("ix_events_at", table_name="events")
