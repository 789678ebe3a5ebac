"""entries without foreign keys

Each entry row was checked against diffs, dirs and names as it was written. On PostgreSQL that
is a trigger per row and key: 0.9 of the 2.8 s `layerindex index` of the small-files benchmark
layer spent writing entries, 0.24 s without them (2.8 → 2.2 s in all). Nothing deletes diffs,
dirs or names, and an entry's ids come from the transaction that writes it (Store.index_layer;
tests hold them to the paths they name, after a rolled-back layer too).

SQLite cannot drop a constraint: the table is made again without them and the rows copied
(the "12 steps" of its ALTER TABLE documentation; ~15 s for 10M entries). Editing the table's
text in sqlite_master instead would be instant, but some builds refuse it (defensive mode, as
on macOS) and the connection that does it keeps the old schema.

Revision ID: 0007_entries_no_foreign_keys
Revises: 0006_name_layer_type_index
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from layerindex.errors import LayerIndexError

revision = "0007_entries_no_foreign_keys"
down_revision = "0006_name_layer_type_index"
branch_labels = None
depends_on = None

KEYS = {"diff_ref": "diffs", "dir_id": "dirs", "name_id": "names"}  # column → referred table


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _remake_sqlite_entries(with_keys=False)
        return
    for column, table in KEYS.items():
        op.drop_constraint(f"fk_entries_{column}_{table}", "entries", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _remake_sqlite_entries(with_keys=True)
        return
    for column, table in KEYS.items():
        op.create_foreign_key(f"fk_entries_{column}_{table}", "entries", table, [column], ["id"])


def _remake_sqlite_entries(with_keys: bool) -> None:
    """entries made again, with or without its keys: the rows copied in key order, then the
    indexes of migrations 0002 and 0006 and their statistics."""
    keys = [
        sa.ForeignKeyConstraint([column], [f"{table}.id"], name=f"fk_entries_{column}_{table}")
        for column, table in KEYS.items()
        if with_keys
    ]
    op.create_table(
        "entries_new",
        sa.Column("diff_ref", sa.Integer, nullable=False),
        sa.Column("dir_id", sa.Integer, nullable=False),
        sa.Column("name_id", sa.Integer, nullable=False),
        sa.Column("type", sa.SmallInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.Integer, nullable=False),
        sa.Column("uid", sa.Integer, nullable=False),
        sa.Column("gid", sa.Integer, nullable=False),
        sa.Column("mtime", sa.BigInteger, nullable=False),
        sa.Column("link_target", sa.Text),
        sa.Column("sha256", sa.Text),
        *keys,
        sa.PrimaryKeyConstraint("diff_ref", "dir_id", "name_id", name="pk_entries"),
        sqlite_with_rowid=False,
    )
    try:
        op.execute("INSERT INTO entries_new SELECT * FROM entries")
    except sa.exc.IntegrityError as exc:  # only the keys of a downgrade can fail
        raise LayerIndexError(
            f"cannot downgrade below {revision}: entries holds rows whose diff, dir or name "
            "does not exist"
        ) from exc
    op.drop_table("entries")
    op.rename_table("entries_new", "entries")
    op.create_index(
        "ix_entries_sha256", "entries", ["sha256"], sqlite_where=sa.text("sha256 IS NOT NULL")
    )
    op.create_index("ix_entries_name_layer", "entries", ["name_id", "diff_ref", "dir_id", "type"])
    if op.get_bind().exec_driver_sql("SELECT 1 FROM entries LIMIT 1").first():
        op.execute("PRAGMA analysis_limit=1000")
        op.execute("ANALYZE entries")
