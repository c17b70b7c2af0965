"""An index for the rate limit's count: requests by user, mode and time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_requests_user_id_mode_created_at", "requests", ["user_id", "mode", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_requests_user_id_mode_created_at", table_name="requests")
