"""Uploads and the partials of final uploads.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("length", sa.BigInteger, nullable=True),
        sa.Column("metadata_header", sa.Text, nullable=True),
        sa.Column("metadata_json", sa.Text, nullable=True),
        sa.Column("concat_kind", sa.String(8), nullable=False),
        sa.Column("concat_header", sa.Text, nullable=True),
        sa.Column("storage_key", sa.String(1024), nullable=True),
        sa.Column("backend_handle", sa.String(1024), nullable=True),
        sa.Column("part_size", sa.BigInteger, nullable=True),
        sa.Column("owner", sa.String(256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_uploads_status_expires_at", "uploads", ["status", "expires_at"])
    op.create_index("ix_uploads_created_at", "uploads", ["created_at"])
    op.create_table(
        "upload_concat",
        sa.Column(
            "final_id",
            sa.String(64),
            sa.ForeignKey("uploads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("partial_id", sa.String(64), sa.ForeignKey("uploads.id"), nullable=False),
    )
    op.create_index("ix_upload_concat_partial_id", "upload_concat", ["partial_id"])


def downgrade() -> None:
    op.drop_table("upload_concat")
    op.drop_table("uploads")
