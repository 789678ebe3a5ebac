"""ix_entries_name_layer covers the entry type: (name, layer, dir, type)

``find`` asks, for every match, what the later layers of its image hold at the match's
ancestors, and only entries that are not directories can change its fate (a directory over a
directory merges). With the type in the index those look-ups are answered by the index alone,
one seek per (ancestor, layer) into its densely packed range instead of a row of the table in
each layer; and an exact path's entries are found the same way before their rows are read. On
a 10M-entry index: exact ``find`` 2.6 → 1.9 ms (p50, first runs), for ~1 more byte an entry.

Revision ID: 0006_name_layer_type_index
Revises: 0005_name_layer_index
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006_name_layer_type_index"
down_revision = "0005_name_layer_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_entries_name_layer", table_name="entries")
    op.create_index("ix_entries_name_layer", "entries", ["name_id", "diff_ref", "dir_id", "type"])
    bind = op.get_bind()
    if (
        bind.dialect.name == "sqlite"
        and bind.exec_driver_sql("SELECT 1 FROM entries LIMIT 1").first()
    ):
        # Dropping the index dropped its planner statistics: without them SQLite seeks the
        # table's rows instead (as Store.analyze does, a sample: 0.2 s on 10M entries).
        op.execute("PRAGMA analysis_limit=1000")
        op.execute("ANALYZE entries")


def downgrade() -> None:
    op.drop_index("ix_entries_name_layer", table_name="entries")
    op.create_index("ix_entries_name_layer", "entries", ["name_id", "diff_ref", "dir_id"])
