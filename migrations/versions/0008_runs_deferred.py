"""runs count the images left alone by their back-off, and list lines that could not be expanded

A run whose images all wait out their back-off checked nothing, and said "0 images": now it says
how many it left alone and until when (the earliest). A list line whose tags could not be listed
was counted as a failed image without being an image ("43 images (45 failed)"); it has its own
count. Plain added columns: instant on SQLite and PostgreSQL alike.

Revision ID: 0008_runs_deferred
Revises: 0007_entries_no_foreign_keys
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_runs_deferred"
down_revision = "0007_entries_no_foreign_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("images_deferred", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("deferred_until", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("lists_failed", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lists_failed")
        batch.drop_column("deferred_until")
        batch.drop_column("images_deferred")
