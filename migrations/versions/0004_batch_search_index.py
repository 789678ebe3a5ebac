"""search index rows written by the store in batches; an index on layers.diff_ref

On SQLite, the AFTER INSERT triggers that copied each new dir and name into its FTS5 table cost
a trigger call per row: interning ran at 41k entries/s instead of 130k. The store now fills the
FTS tables with one INSERT … SELECT per batch of new ids (7x cheaper), so the insert triggers
go. The delete and update triggers stay: rows are never deleted or changed by layerindex, and
anything else that does keeps the index right. PostgreSQL's GIN indexes need nothing.

``ix_layers_diff_ref``: every query from entries to the images holding them joins layers on
diff_ref; without an index SQLite builds an automatic one per query (or, before ANALYZE, walks
every layer's entries: `find --name` took 1 s on 10M entries, 15-26 ms with it).

Revision ID: 0004_batch_search_index
Revises: 0003_crawl_runs
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0004_batch_search_index"
down_revision = "0003_crawl_runs"
branch_labels = None
depends_on = None

FTS = (("dirs_fts", "dirs", "path"), ("names_fts", "names", "name"))


def upgrade() -> None:
    op.create_index(op.f("ix_layers_diff_ref"), "layers", ["diff_ref"])
    if op.get_bind().dialect.name != "sqlite":
        return
    for fts, _table, _column in FTS:
        op.execute(f"DROP TRIGGER IF EXISTS {fts}_insert")


def downgrade() -> None:
    op.drop_index(op.f("ix_layers_diff_ref"), table_name="layers")
    if op.get_bind().dialect.name != "sqlite":
        return
    for fts, table, column in FTS:
        op.execute(
            f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN "
            f"INSERT INTO {fts}(rowid, {column}) VALUES (new.id, new.{column}); END"
        )
