"""entries indexed by (name, layer, dir) instead of (name, dir)

``find`` reads an image's layers at a time: ``--name X`` in these layers, an exact path in these
layers. With the layer second, each is one seek per layer; with (name, dir) a common name's
whole range was walked for every batch of images (``--name __init__.cpython-311.pyc``: 14k
rows of one image out of 300k, 460 ms). Same size: the index holds the same three columns.

Revision ID: 0005_name_layer_index
Revises: 0004_batch_search_index
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0005_name_layer_index"
down_revision = "0004_batch_search_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_entries_name_dir", table_name="entries")
    op.create_index("ix_entries_name_layer", "entries", ["name_id", "diff_ref", "dir_id"])


def downgrade() -> None:
    op.drop_index("ix_entries_name_layer", table_name="entries")
    op.create_index("ix_entries_name_dir", "entries", ["name_id", "dir_id"])
