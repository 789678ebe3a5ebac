"""path search: trigram indexes on interned dirs and names, an index on entries.sha256

SQLite: an external-content FTS5 table per interned column with the trigram tokenizer (it
holds only the index, ~30 bytes a name), kept in sync by triggers on dirs/names, so the store's
``INSERT … ON CONFLICT DO NOTHING`` interning needs no change. PostgreSQL: pg_trgm GIN indexes.
Both index the distinct strings, never one row per layer entry.

Revision ID: 0002_path_search
Revises: 0001_initial_schema
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_path_search"
down_revision = "0001_initial_schema"
branch_labels = None
depends_on = None

# (FTS table, interned table, column): layerindex.index.schema.SEARCH_TABLES names the same tables.
FTS = (("dirs_fts", "dirs", "path"), ("names_fts", "names", "name"))
# The PostgreSQL trigram index expressions: a dir as "/usr/bin/", a name as "/kubectl".
PG_EXPRESSION = {"dirs": "path || '/'", "names": "'/' || name"}


def upgrade() -> None:
    # Only files are hashed: most entries have no sha256, and a partial index skips them.
    op.create_index(
        "ix_entries_sha256",
        "entries",
        ["sha256"],
        sqlite_where=sa.text("sha256 IS NOT NULL"),
        postgresql_where=sa.text("sha256 IS NOT NULL"),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for fts, table, column in FTS:
            # detail=none: no positions (a third of the size); candidates are re-checked anyway.
            op.execute(
                f"CREATE VIRTUAL TABLE {fts} USING fts5({column}, content='{table}', "
                "content_rowid='id', tokenize='trigram case_sensitive 1', detail=none, "
                "columnsize=0)"
            )
            op.execute(
                f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN "
                f"INSERT INTO {fts}(rowid, {column}) VALUES (new.id, new.{column}); END"
            )
            op.execute(
                f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN "
                f"INSERT INTO {fts}({fts}, rowid, {column}) "
                f"VALUES ('delete', old.id, old.{column}); END"
            )
            op.execute(
                f"CREATE TRIGGER {fts}_update AFTER UPDATE ON {table} BEGIN "
                f"INSERT INTO {fts}({fts}, rowid, {column}) "
                f"VALUES ('delete', old.id, old.{column}); "
                f"INSERT INTO {fts}(rowid, {column}) VALUES (new.id, new.{column}); END"
            )
            op.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")  # rows already there
    elif dialect == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # On an expression, not the bare column: pg_trgm also answers "=", and the planner
        # would then pick it over the unique B-tree for the store's interning lookups (20x
        # slower inserts). layerindex.index.patterns queries these same expressions.
        for _fts, table, column in FTS:
            op.execute(
                f"CREATE INDEX ix_{table}_{column}_trgm ON {table} "
                f"USING gin (({PG_EXPRESSION[table]}) gin_trgm_ops)"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for fts, _table, _column in FTS:
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {fts}_{event}")
            op.execute(f"DROP TABLE IF EXISTS {fts}")
    elif dialect == "postgresql":
        for _fts, table, column in FTS:
            op.execute(f"DROP INDEX IF EXISTS ix_{table}_{column}_trgm")
        # pg_trgm stays: other databases or schemas on the server may use it.
    op.drop_index("ix_entries_sha256", table_name="entries")
