"""Alembic owns the schema: head matches the models, downgrade works, old databases are refused."""

from __future__ import annotations

import shutil
import sqlite3
from importlib import import_module
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from test_store import e, find_all, image, index_image

from layerindex.errors import LayerIndexError, SchemaOutOfDate
from layerindex.index import database, find
from layerindex.index.database import Reader
from layerindex.index.images import Finder
from layerindex.index.schema import include_name, metadata
from layerindex.index.store import Store
from layerindex.layer.entries import EntryType

sqlite_head = import_module("layerindex.migrations.sqlite_head")


def test_fresh_database_is_created_at_head_matching_the_models(db_url: str) -> None:
    engine = database.open_database(db_url)
    with engine.connect() as connection:
        assert database.current_revision(connection) == database.head_revision()
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": include_name}
        )
        assert compare_metadata(context, metadata) == []
    engine.dispose()


def test_downgrade_to_base_removes_every_table(db_url: str) -> None:
    url = db_url
    database.open_database(url).dispose()
    database.downgrade(url, "base")
    engine = database.create(url)
    assert inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    engine = database.create(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE something_else (id INTEGER)"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate, match="not a layerindex database"):
        database.open_database(url)


NEXT_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "9999_test_next"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("test_next", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("test_next")
"""


def test_older_revision_is_refused_then_upgraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    database.open_database(url).dispose()  # made at today's head
    # A later layerindex: the same migrations plus one more revision.
    newer = tmp_path / "migrations"
    shutil.copytree(database.MIGRATIONS_DIR, newer)
    head = database.head_revision()
    (newer / "versions" / "9999_test_next.py").write_text(NEXT_REVISION.format(head=head))
    monkeypatch.setattr(database, "MIGRATIONS_DIR", newer)

    with pytest.raises(SchemaOutOfDate) as info:
        database.open_database(url)
    assert str(info.value) == (
        f"the database sqlite:///{tmp_path / 'index.db'} is at schema revision {head}, this "
        "layerindex needs 9999_test_next; upgrade it with: "
        f"layerindex --db 'sqlite:///{tmp_path / 'index.db'}' db upgrade"
    )
    assert database.upgrade(url) == (head, "9999_test_next")
    database.open_database(url).dispose()


def test_migration_files_are_named_after_their_revisions_in_order() -> None:
    # head_revision() reads the newest file name instead of loading Alembic: hold it to that.
    config = Config()
    config.set_main_option("script_location", str(database.MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    chain = [rev.revision for rev in script.walk_revisions()][::-1]
    files = sorted(p.stem for p in (database.MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    assert chain == files
    assert script.get_current_head() == database.head_revision() == files[-1]


def sqlite_dump(path: Path) -> tuple[list[tuple[str, ...]], list[tuple[object, ...]]]:
    """Everything a SQLite schema is: sqlite_master in creation order (automatic indexes and
    FTS5 shadow tables included; not the page numbers), and the rows an empty database at head
    holds."""
    connection = sqlite3.connect(path)
    try:
        master = list(
            connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
        )
        rows = [
            *connection.execute("SELECT * FROM alembic_version"),
            *connection.execute("SELECT * FROM dirs_fts_config"),
            *connection.execute("SELECT * FROM names_fts_config"),
        ]
        return master, rows
    finally:
        connection.close()


def statements(path: Path) -> list[str]:
    """The statements that make a database's schema, in order: what SQLite makes by itself
    (automatic indexes, FTS5 shadow tables) left out."""
    connection = sqlite3.connect(path)
    try:
        shadow = {
            name
            for (name,) in connection.execute(
                "SELECT name FROM pragma_table_list WHERE type = 'shadow'"
            )
        }
        return [
            sql
            for name, sql in connection.execute(
                "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
            )
            if name not in shadow
        ]
    finally:
        connection.close()


def test_a_new_sqlite_index_is_made_from_the_head_statements_as_the_migrations_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrated = tmp_path / "migrated.db"
    database.upgrade(f"sqlite:///{migrated}")  # every migration, through Alembic
    made = statements(migrated)
    assert list(sqlite_head.STATEMENTS) == made, (
        "migrations/sqlite_head.py is not what the migrations make; its STATEMENTS are now:\n"
        + "\n".join(f"    {statement!r}," for statement in made)
    )
    assert database.head_revision() == sqlite_head.REVISION

    def no_alembic(_connection: object = None) -> None:
        raise AssertionError("a new SQLite database is made without Alembic")

    monkeypatch.setattr(database, "_alembic_config", no_alembic)
    fresh = tmp_path / "fresh.db"
    engine = database.open_database(f"sqlite:///{fresh}")
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": include_name}
        )
        assert compare_metadata(context, metadata) == []
    engine.dispose()
    assert sqlite_dump(fresh) == sqlite_dump(migrated)


def test_head_statements_behind_the_migrations_are_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A migration added without new head statements: a new database is migrated instead.
    newer = tmp_path / "migrations"
    shutil.copytree(database.MIGRATIONS_DIR, newer)
    head = database.head_revision()
    (newer / "versions" / "9999_test_next.py").write_text(NEXT_REVISION.format(head=head))
    monkeypatch.setattr(database, "MIGRATIONS_DIR", newer)
    url = f"sqlite:///{tmp_path / 'index.db'}"
    engine = database.open_database(url)
    with engine.connect() as connection:
        assert database.current_revision(connection) == "9999_test_next"
    engine.dispose()


def test_an_index_with_entries_is_upgraded_from_0005_and_finds_the_same(db_url: str) -> None:
    # 0006: the type in the name index, its statistics made again; 0007: entries without
    # foreign keys (on SQLite by editing the table's text, its rows untouched).
    url = db_url
    store = Store(database.open_database(url))
    index_image(
        store,
        image("sha256:i1", ["sha256:l0", "sha256:l1", "sha256:l2"]),
        [
            [e("/usr", EntryType.DIR, 0), e("/usr/bin", EntryType.DIR, 0), e("/usr/bin/kubectl")],
            [e("/usr", EntryType.DIR, 0), e("/usr/bin/kubectl", size=2)],
            [e("/usr/bin", EntryType.SYMLINK, 0, target="/bin")],
        ],
    )
    store.analyze()
    with Reader.from_engine(store.engine) as reader:
        before = find_all(Finder(reader), "/usr/bin/kubectl")
    assert inspect(store.engine).get_foreign_keys("entries") == []
    store.engine.dispose()
    database.downgrade(url, "0005_name_layer_index")
    engine = database.create(url)
    keys = {
        (k["constrained_columns"][0], k["referred_table"])
        for k in inspect(engine).get_foreign_keys("entries")
    }
    assert keys == {("diff_ref", "diffs"), ("dir_id", "dirs"), ("name_id", "names")}
    engine.dispose()

    assert database.upgrade(url) == ("0005_name_layer_index", database.head_revision())
    engine = database.open_database(url)
    assert inspect(engine).get_foreign_keys("entries") == []
    with Reader.from_engine(engine) as reader:
        assert find_all(Finder(reader), "/usr/bin/kubectl") == before
    assert [(r["layer_index"], r["state"], r["changed_by_layer"]) for r in before] == [
        (0, "overwritten", 1),
        (1, "deleted", 2),  # with /usr/bin, replaced by a link
    ]
    engine.dispose()
    if not url.startswith("sqlite"):
        return
    sqlite_file = url.removeprefix("sqlite:///")
    assert sqlite3.connect(sqlite_file).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # The statistics the dropped index had are made again: what later layers hold at a match's
    # ancestors (type included) comes from the index, not from the rows.
    plan = sqlite3.connect(sqlite_file).execute(
        f"EXPLAIN QUERY PLAN WITH {find._pairs_in_layers(2, 2)} "
        f"SELECT e.diff_ref, e.type FROM {find._PAIR_SEEKS}",
        [1, 2, 3, 4, 1, 2],
    )
    assert "USING COVERING INDEX ix_entries_name_layer" in " ".join(row[3] for row in plan)


def test_downgrade_below_0007_refuses_entries_without_their_dir(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    store = Store(database.open_database(url))
    index_image(store, image("sha256:i1", ["sha256:l0"]), [[e("/usr/bin/kubectl")]])
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO entries SELECT diff_ref, 999, name_id, type, size, mode, uid, gid, "
            "mtime, link_target, sha256 FROM entries"
        )
    store.engine.dispose()
    with pytest.raises(LayerIndexError, match="entries holds rows whose diff, dir or name"):
        database.downgrade(url, "0006_name_layer_type_index")
    engine = database.open_database(url)  # still at head, its table as it was
    assert inspect(engine).get_foreign_keys("entries") == []
    engine.dispose()
