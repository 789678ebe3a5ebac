"""Alembic owns the schema: head matches the models, downgrade works, old databases are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from layerindex import database
from layerindex.errors import SchemaOutOfDate
from layerindex.schema import include_name, metadata


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
