"""requests.parent_request_id: which request a regeneration came from.

The column is backfilled from each request's ``created`` event, so the read model stays
a projection of the log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1_000


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("parent_request_id", sa.String(36), nullable=True))
        batch.create_index("ix_requests_parent_request_id", ["parent_request_id"])
    events = sa.table(
        "events",
        sa.column("id", sa.Integer),
        sa.column("request_id", sa.String),
        sa.column("seq", sa.Integer),
        sa.column("data", sa.Text),
    )
    requests = sa.table(
        "requests", sa.column("request_id", sa.String), sa.column("parent_request_id", sa.String)
    )
    conn = op.get_bind()
    after = 0
    while True:
        rows = conn.execute(
            sa.select(events.c.id, events.c.request_id, events.c.data)
            .where(events.c.seq == 1, events.c.id > after)
            .order_by(events.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1].id
        updates = [
            {"b_id": row.request_id, "b_parent": parent}
            for row in rows
            if isinstance(parent := json.loads(row.data).get("parent_request_id"), str)
        ]
        if updates:
            conn.execute(
                requests.update()
                .where(requests.c.request_id == sa.bindparam("b_id"))
                .values(parent_request_id=sa.bindparam("b_parent")),
                updates,
            )


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_index("ix_requests_parent_request_id")
        batch.drop_column("parent_request_id")
