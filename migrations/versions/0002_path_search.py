"""path search indexes (issue 4): being written now; this revision id is reserved for them

Revision ID: 0002_path_search
Revises: 0001_initial_schema
Create Date: 2026-11-28
"""

from __future__ import annotations

revision = "0002_path_search"
down_revision = "0001_initial_schema"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
