"""The outbox of events (post-create, post-finish, post-terminate): written in the
transaction that makes the change, delivered at least once by a relay.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events_outbox",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("upload_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_events_outbox_next_attempt_at", "events_outbox", ["next_attempt_at"])
    op.create_index("ix_events_outbox_upload_id", "events_outbox", ["upload_id"])


def downgrade() -> None:
    op.drop_index("ix_events_outbox_upload_id", "events_outbox")
    op.drop_index("ix_events_outbox_next_attempt_at", "events_outbox")
    op.drop_table("events_outbox")
