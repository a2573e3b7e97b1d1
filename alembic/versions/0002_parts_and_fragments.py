"""Parts and fragments of uploads kept in an object store.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_parts",
        sa.Column(
            "upload_id",
            sa.String(64),
            sa.ForeignKey("uploads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("etag", sa.String(256), nullable=False),
        sa.Column("checksum", sa.String(128), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
    )
    op.create_table(
        "upload_fragments",
        sa.Column(
            "upload_id",
            sa.String(64),
            sa.ForeignKey("uploads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("offset", sa.BigInteger, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("checksum", sa.String(128), nullable=False),
    )
    # finished uploads whose object is not assembled yet are looked up by the sweeper
    op.create_index("ix_uploads_backend_handle", "uploads", ["backend_handle"])


def downgrade() -> None:
    op.drop_index("ix_uploads_backend_handle", "uploads")
    op.drop_table("upload_fragments")
    op.drop_table("upload_parts")
