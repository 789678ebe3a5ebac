"""Opening the database: where it lives, connection settings, the schema revision check, and
the plain DB-API reader ``find`` queries through.

``find`` is a short-lived command: on SQLite it reads through the stdlib ``sqlite3`` and never
imports SQLAlchemy or Alembic (0.3 s of start-up here). Everything else opens an Engine.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from layerindex.errors import LayerIndexError, NoIndex, SchemaOutOfDate, UsageError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Engine
    from sqlalchemy.engine import Connection

# SQLAlchemy is imported by the functions that open an Engine, Alembic only when a schema must
# change: `find` starts faster without either.


def default_url() -> str:
    """``LAYERINDEX_DB``, else SQLite at ``$XDG_DATA_HOME/layerindex/index.db``."""
    if url := os.environ.get("LAYERINDEX_DB"):
        return url
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(data_home) / 'layerindex' / 'index.db'}"


# migrations/ ships inside the wheel as layerindex.migrations; no alembic.ini is needed.
# (Found through the package's __file__: importlib.resources costs `find` 7 ms of start-up.)
MIGRATIONS_DIR = Path(str(import_module("layerindex.migrations").__file__)).parent


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
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

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
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if "alembic_version" not in inspect(connection).get_table_names():
        return None
    try:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        return None


def open_database(url: str, *, create_empty: bool = True) -> Engine:
    """Open ``url`` at the latest schema: a new database is created (with ``create_empty``,
    else it is an error: there is nothing to read), an older one refused."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    engine = create(url)
    try:
        with engine.begin() as connection:
            revision = current_revision(connection)
            if revision is None and not inspect(connection).get_table_names():
                if not create_empty:
                    raise NoIndex(
                        f"the database {engine.url!r} is empty; "
                        "index an image first (layerindex index REF)"
                    )
                if not _create_sqlite_at_head(connection):
                    from alembic import command

                    command.upgrade(_alembic_config(connection), "head")
                return engine
        check_revision(repr(engine.url), revision)
    except OperationalError as exc:
        engine.dispose()
        raise LayerIndexError(f"cannot open database {engine.url!r}: {exc.orig}") from exc
    except LayerIndexError:
        engine.dispose()
        raise
    return engine


def _create_sqlite_at_head(connection: Connection) -> bool:
    """Make an empty SQLite database from the head schema's statements (migrations/
    sqlite_head.py, held by a test to what the migrations make) and stamp it: 0.5 s of Alembic
    a new index saves. False, and nothing done, on PostgreSQL or when the statements are not
    at the head revision."""
    if connection.dialect.name != "sqlite":
        return False
    head = import_module("layerindex.migrations.sqlite_head")
    if head_revision() != head.REVISION:
        return False
    for statement in head.STATEMENTS:
        connection.exec_driver_sql(statement)
    connection.exec_driver_sql(
        "INSERT INTO alembic_version (version_num) VALUES (?)", (head.REVISION,)
    )
    return True


def check_revision(shown_url: str, revision: str | None) -> None:
    """Refuse a database whose schema revision is not this layerindex's head, saying why and
    what to do. Migration files are named after their revisions (``head_revision``), so the
    known revisions are read from the file names without loading Alembic."""
    head = head_revision()
    if revision == head:
        return
    if revision is None:
        raise SchemaOutOfDate(
            f"{shown_url} has tables but no layerindex schema revision: it is not a "
            "layerindex database; give another --db"
        )
    known = {p.stem for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py")}
    if revision in known:
        raise SchemaOutOfDate(
            f"the database {shown_url} is at schema revision {revision}, this layerindex "
            f"needs {head}; upgrade it with: layerindex --db '{shown_url}' db upgrade"
        )
    raise SchemaOutOfDate(
        f"the database {shown_url} has schema revision {revision!r}, which this layerindex "
        "does not know: it was made by a newer layerindex, or is not a layerindex database"
    )


class Reader:
    """A read-only DB-API connection: SQL is written once, with ``?`` placeholders, and adapted
    here to the driver's style (psycopg's ``%s``). The driver's errors become LayerIndexError."""

    def __init__(
        self,
        connection: Any,
        dialect: str,
        errors: type[Exception] = sqlite3.Error,
        engine: Engine | None = None,
    ) -> None:
        self.connection = connection
        self.dialect = dialect  # "sqlite" or "postgresql"
        self.errors = errors  # the driver's DB-API Error class
        self._engine = engine  # disposed on close when the reader made it

    @classmethod
    def from_engine(cls, engine: Engine, owned: bool = False) -> Reader:
        """A reader on one of ``engine``'s pooled connections (closing returns it; with
        ``owned``, closing disposes of the engine too)."""
        errors = engine.dialect.loaded_dbapi.Error
        return cls(engine.raw_connection(), engine.dialect.name, errors, engine if owned else None)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if self.dialect != "sqlite":
            sql = sql.replace("?", "%s")
        try:
            cursor = self.connection.cursor()
            try:
                cursor.execute(sql, tuple(params))
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except self.errors as exc:
            raise LayerIndexError(f"cannot read the index: {exc}") from exc

    def close(self) -> None:
        self.connection.close()
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def among(dialect: str, expression: str, values: Sequence[object]) -> tuple[str, list[object]]:
    """``expression IN (…)`` for these values, and its parameters. PostgreSQL gets one array
    (``= ANY(?)``): planned once whatever its length (5,000 ids: 13 ms instead of 25 as a list)
    and probed in an index as a list is. SQLite gets the list."""
    if dialect == "sqlite":
        return f"{expression} IN ({', '.join('?' * len(values))})", list(values)
    return f"{expression} = ANY(?)", [list(values)]


READER_MMAP_BYTES = 1 << 30


def open_reader(url: str) -> Reader:
    """Open ``url`` for reading at the latest schema. A missing or empty database is NoIndex
    (there is nothing to read), never created. A SQLite file is read through the stdlib, a
    PostgreSQL database through psycopg: SQLAlchemy, 0.15 s of a `find` call, stays unloaded."""
    if _plain_postgres(url) and (reader := _postgres_reader(url)) is not None:
        return reader
    path = _sqlite_file(url)
    if path is None:
        return Reader.from_engine(open_database(url, create_empty=False), owned=True)
    shown = url
    if not path.is_file():
        raise NoIndex(
            f"there is no index at {path}; index an image first (layerindex index REF) "
            "or give the database with --db or LAYERINDEX_DB"
        )
    try:
        # mode=ro: find never writes; a crawler may be writing the same file (WAL).
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
        # Pages through a memory map, not a read() each: ancestor checks are page-bound.
        connection.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        revision = None
        if "alembic_version" in tables:
            found = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = found[0] if found else None
    except sqlite3.DatabaseError as exc:
        raise LayerIndexError(f"cannot open database {shown}: {exc}") from exc
    return _checked(Reader(connection, "sqlite"), shown, tables, revision)


PSYCOPG_SCHEME = "postgresql+psycopg://"


def _plain_postgres(url: str) -> bool:
    # A URL with options is SQLAlchemy's to read (as for SQLite: _sqlite_file).
    return url.startswith(PSYCOPG_SCHEME) and "?" not in url


def reads_without_sqlalchemy(url: str) -> bool:
    """Whether ``open_reader(url)`` reads through the DB-API alone (psycopg installed)."""
    return _sqlite_file(url) is not None or _plain_postgres(url)


def libpq_url(url: str) -> str:
    """The URL psycopg (libpq) connects with, for a SQLAlchemy ``postgresql+psycopg://`` one:
    the same without the driver's name."""
    return "postgresql://" + url.removeprefix(PSYCOPG_SCHEME)


def _postgres_reader(url: str) -> Reader | None:
    """A reader on a psycopg connection to ``url``; None without psycopg (the SQLAlchemy path
    then says what to install)."""
    try:
        import psycopg
    except ImportError:
        return None
    shown = _shown(url)
    try:
        connection = psycopg.connect(libpq_url(url), autocommit=True)
    except psycopg.Error as exc:
        raise LayerIndexError(f"cannot open database {shown}: {exc}") from exc
    reader = Reader(connection, "postgresql", psycopg.Error)
    try:
        tables = {
            r[0]
            for r in reader.rows(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        found = (
            reader.rows("SELECT version_num FROM alembic_version")
            if "alembic_version" in tables
            else []
        )
    except LayerIndexError:
        reader.close()
        raise
    return _checked(reader, shown, tables, found[0][0] if found else None)


def _checked(reader: Reader, shown: str, tables: set[str], revision: str | None) -> Reader:
    """``reader``, unless its database is empty or not at this layerindex's schema revision."""
    if not tables:
        reader.close()
        raise NoIndex(f"the database {shown} is empty; index an image first (layerindex index REF)")
    try:
        check_revision(shown, revision)
    except SchemaOutOfDate:
        reader.close()
        raise
    return reader


def _shown(url: str) -> str:
    """``url`` as messages show it: a password as ``***``, as SQLAlchemy shows URLs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    return f"{scheme}{sep}{netloc}{slash}{path}"


def _sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///path`` URL; None for any other URL (PostgreSQL, SQLite
    in memory or with options), which goes through SQLAlchemy."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if rest and "?" not in rest and rest != ":memory:":
                return Path(rest)
    return None


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
