"""crawl runs, crawl targets with back-off, layer leases for workers

Revision ID: 0003_crawl_runs
Revises: 0002_path_search
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_crawl_runs"
down_revision = "0002_path_search"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("images", sa.Integer, nullable=False),
        sa.Column("images_unchanged", sa.Integer, nullable=False),
        sa.Column("images_failed", sa.Integer, nullable=False),
        sa.Column("layers_indexed", sa.Integer, nullable=False),
        sa.Column("layers_known", sa.Integer, nullable=False),
        sa.Column("layers_skipped", sa.Integer, nullable=False),
        sa.Column("layers_failed", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.Text),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "targets",
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("last_checked", WHEN),
        sa.Column("last_digest", sa.Text),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt", WHEN),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_until", WHEN),
        sa.PrimaryKeyConstraint("reference", name=op.f("pk_targets")),
    )
    with op.batch_alter_table("layers") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text))
        batch.add_column(sa.Column("lease_until", WHEN))


def downgrade() -> None:
    with op.batch_alter_table("layers") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
    op.drop_table("targets")
    op.drop_table("runs")
