"""Opening the database: where it lives, connection settings, and the schema revision check."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only when a schema must change: `find` starts faster without it.

from layerindex.errors import LayerIndexError, SchemaOutOfDate, UsageError


def default_url() -> str:
    """``LAYERINDEX_DB``, else SQLite at ``$XDG_DATA_HOME/layerindex/index.db``."""
    if url := os.environ.get("LAYERINDEX_DB"):
        return url
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(data_home) / 'layerindex' / 'index.db'}"


# migrations/ ships inside the wheel as layerindex.migrations; no alembic.ini is needed.
MIGRATIONS_DIR = Path(str(files("layerindex.migrations")))


def _alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision: migration files are named after their revision ids, which sort in
    order (``0001_initial_schema``, ``0002_…``; tests/test_migrations.py holds them to it)."""
    return max(p.stem for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL: readers (find) never wait for the crawler's write transaction.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create(url: str) -> Engine:
    """An engine for ``url``; a SQLite file's directory is created when missing."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"--db {url!r} is not a database URL (e.g. sqlite:///index.db)") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise UsageError(
            f"no database driver for {parsed.drivername}: {exc}; "
            "for PostgreSQL install layerindex[postgres] and use postgresql+psycopg://…"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def current_revision(connection: Connection) -> str | None:
    """The database's Alembic revision, None for a database without one."""
    if "alembic_version" not in inspect(connection).get_table_names():
        return None
    try:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        return None


def open_database(url: str) -> Engine:
    """Open ``url`` at the latest schema: a new database is created, an older one refused."""
    engine = create(url)
    try:
        with engine.begin() as connection:
            revision = current_revision(connection)
            if revision is None and not inspect(connection).get_table_names():
                from alembic import command

                command.upgrade(_alembic_config(connection), "head")
                return engine
    except OperationalError as exc:
        raise LayerIndexError(f"cannot open database {engine.url!r}: {exc.orig}") from exc
    head = head_revision()
    if revision == head:
        return engine
    if revision is None:
        raise SchemaOutOfDate(
            f"{engine.url!r} has tables but no layerindex schema revision: it is not a "
            "layerindex database; give another --db"
        )
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if revision in known:
        raise SchemaOutOfDate(
            f"the database {engine.url!r} is at schema revision {revision}, this layerindex "
            f"needs {head}; upgrade it with: layerindex --db '{engine.url}' db upgrade"
        )
    raise SchemaOutOfDate(
        f"the database {engine.url!r} has schema revision {revision!r}, which this layerindex "
        "does not know: it was made by a newer layerindex, or is not a layerindex database"
    )


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate ``url`` to ``revision``; returns (before, after)."""
    from alembic import command

    engine = create(url)
    with engine.begin() as connection:
        before = current_revision(connection)
        command.upgrade(_alembic_config(connection), revision)
        after = current_revision(connection)
    engine.dispose()
    return before, after


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = create(url)
    with engine.begin() as connection:
        command.downgrade(_alembic_config(connection), revision)
    engine.dispose()
