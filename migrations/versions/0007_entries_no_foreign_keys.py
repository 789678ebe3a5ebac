"""entries without foreign keys

Each entry row was checked against diffs, dirs and names as it was written. On PostgreSQL that
is a trigger per row and key: 0.9 of the 2.8 s `layerindex index` of the small-files benchmark
layer spent writing entries, 0.24 s without them (2.8 → 2.2 s in all). Nothing deletes diffs,
dirs or names, and an entry's ids come from the transaction that writes it (Store.index_layer;
tests hold them to the paths they name, after a rolled-back layer too).

SQLite keeps a table's constraints in the text of its CREATE TABLE, and dropping foreign keys
does not change how rows are stored: that text is edited in place (the procedure of "ALTER TABLE
… Making Other Kinds Of Table Schema Changes" in SQLite's documentation), instantly whatever the
table's size, instead of copying every row into a new table.

Revision ID: 0007_entries_no_foreign_keys
Revises: 0006_name_layer_type_index
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0007_entries_no_foreign_keys"
down_revision = "0006_name_layer_type_index"
branch_labels = None
depends_on = None

KEYS = {"diff_ref": "diffs", "dir_id": "dirs", "name_id": "names"}  # column → referred table


def _clause(column: str, table: str) -> str:
    """A key as SQLAlchemy wrote it into the CREATE TABLE of migration 0001."""
    constraint = f"fk_entries_{column}_{table}"
    return f", \n\tCONSTRAINT {constraint} FOREIGN KEY({column}) REFERENCES {table} (id)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _edit_sqlite_entries(with_keys=False)
        return
    for column, table in KEYS.items():
        op.drop_constraint(f"fk_entries_{column}_{table}", "entries", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _edit_sqlite_entries(with_keys=True)
        return
    for column, table in KEYS.items():
        op.create_foreign_key(f"fk_entries_{column}_{table}", "entries", table, [column], ["id"])


def _edit_sqlite_entries(with_keys: bool) -> None:
    bind = op.get_bind()
    (sql,) = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'entries'"
    ).one()
    keys = "".join(_clause(column, table) for column, table in KEYS.items())
    anchor = "PRIMARY KEY (diff_ref, dir_id, name_id)"
    edited = sql.replace(anchor, anchor + keys) if with_keys else sql.replace(keys, "")
    if edited == sql or edited.count(anchor) != 1:
        raise RuntimeError(f"entries is not the table this migration knows: {sql!r}")
    (version,) = bind.exec_driver_sql("PRAGMA schema_version").one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'entries'", (edited,)
    )
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    if with_keys and bind.exec_driver_sql("PRAGMA foreign_key_check(entries)").first():
        raise RuntimeError("entries holds rows whose diff, dir or name does not exist")
