"""Opening the database: where it lives, connection settings, the schema revision check, and
the plain DB-API reader ``find`` queries through.

``find`` is a short-lived command: on SQLite it reads through the stdlib ``sqlite3`` and never
imports SQLAlchemy or Alembic (0.3 s of start-up here). Everything else opens an Engine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from layerindex.errors import (
    DatabaseError,
    DuplicateRow,
    LayerIndexError,
    NoIndex,
    SchemaOutOfDate,
    UsageError,
)

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import URL, Engine
    from sqlalchemy.engine import Connection, ExceptionContext
    from sqlalchemy.exc import DBAPIError

# SQLAlchemy is imported by the functions that open an Engine, Alembic only when a schema must
# change: `find` starts faster without either.


def database_url(given: str | None = None) -> str:
    """The URL of the database ``--db`` gave, else ``LAYERINDEX_DB``'s, else SQLite at
    ``$XDG_DATA_HOME/layerindex/index.db``. A value without ``://`` is a SQLite file's path
    (relative to the working directory, ``~`` expanded), as sqlite-utils and datasette take it."""
    if not (given := given or os.environ.get("LAYERINDEX_DB")):
        data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return f"sqlite:///{Path(data_home) / 'layerindex' / 'index.db'}"
    if "://" in given:
        return given
    if "@" in given.partition("/")[0]:
        # user:password@host/name is a URL without its scheme, not a file to create.
        raise UsageError(
            f"--db {shown_url(given)!r} is a database URL without its scheme: give "
            "postgresql+psycopg://… (or a SQLite file's path)"
        )
    return f"sqlite:///{Path(given).expanduser().absolute()}"


# A URL's password as SQLAlchemy's make_url reads it: after the user name's colon, up to the @
# (of a URL with a scheme, or of one without: user:password@host/name).
_PASSWORD = re.compile(r"^(?:[\w+.-]+://|(?![\w+.-]+://))[^:/@]*:(?P<password>[^@]*)@")


def redact(text: str, url: str) -> str:
    """``text`` (a message, the driver's error) with ``url``'s password as ``***``, in the
    form ``url`` spells it and percent-decoded: libpq, for one, quotes a malformed URL whole."""
    found = _PASSWORD.match(url)
    if found is None or not found["password"]:
        return text
    for secret in sorted({found["password"], unquote(found["password"])}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def shown_url(url: str) -> str:
    """``url`` as messages show it: its password as ``***``, as SQLAlchemy shows URLs."""
    found = _PASSWORD.match(url)
    if found is None or not found["password"]:
        return url
    return url[: found.start("password")] + "***" + url[found.end("password") :]


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


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (find) never wait for the crawler's write transaction.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _read_only_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url``; a SQLite file's directory is created when missing. With
    ``read_only``, an existing plain SQLite file is opened read-only (``mode=ro``: SQLite
    itself refuses any write, so a shared index the user cannot write is read as well)."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import NoSuchModuleError
    from sqlalchemy.pool import QueuePool

    parsed = _parsed_url(url)
    path = _sqlite_file(url)
    if read_only and path is not None:
        # Its URI made here, not by SQLAlchemy: make_url decodes %23 into a #, which ends it.
        uri = _read_only_uri(path)
        engine = create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
            poolclass=QueuePool,  # "sqlite://" alone would be a database in memory
        )
        event.listen(engine, "connect", _read_only_pragmas)
        return engine
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        directory = Path(parsed.database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = "a file of that name is there" if isinstance(exc, FileExistsError) else None
            raise LayerIndexError(
                f"cannot make the directory {directory} for the database: "
                f"{reason or exc.strerror or exc}; give another --db"
            ) from exc
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


def _parsed_url(url: str) -> URL:
    """``url`` as SQLAlchemy reads it; one it cannot read is a UsageError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise UsageError(
            f"--db {shown_url(url)!r} is not a database URL: give sqlite:///PATH, "
            "postgresql+psycopg://USER@HOST[:PORT]/NAME or a SQLite file's path"
        ) from exc


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
    else it is an error: there is nothing to read, and a SQLite file is opened read-only), an
    older one refused."""
    from sqlalchemy import event, inspect
    from sqlalchemy.exc import OperationalError

    path = _sqlite_file(url)
    if not create_empty and path is not None and not path.is_file():
        raise _no_sqlite_index(path)
    engine = create(url, read_only=not create_empty)
    shown = shown_url(url)
    try:
        with _connect(engine, url) as connection:
            revision = current_revision(connection)
            empty = revision is None and not inspect(connection).get_table_names()
        if empty and not create_empty:
            raise NoIndex(
                f"the database {shown} is empty; index an image first (layerindex index REF)"
            )
        if empty:
            revision = _create_at_head(engine, url)
        check_revision(shown, revision)
    except OperationalError as exc:
        engine.dispose()
        raise _cannot_open(url, exc) from exc
    except LayerIndexError:
        engine.dispose()
        raise
    event.listen(engine, "handle_error", _driver_error)
    return engine


def _driver_error(context: ExceptionContext) -> DatabaseError | None:
    """The ``handle_error`` hook of the engines ``open_database`` opens: a driver's error
    (SQLAlchemy's DBAPIError) is raised as DatabaseError, a broken unique constraint as
    DuplicateRow; SQLAlchemy still rolls back and drops a connection the server ended."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(context.sqlalchemy_exception, DBAPIError):
        return None
    return database_error(context.sqlalchemy_exception)


def database_error(exc: DBAPIError) -> DatabaseError:
    """``exc`` as the error tree's DatabaseError, saying the first line the database said."""
    from sqlalchemy.exc import IntegrityError

    said = str(exc.orig).strip()
    error = DuplicateRow if isinstance(exc, IntegrityError) else DatabaseError
    return error(said.splitlines()[0] if said else repr(exc.orig))


def _cannot_open(url: str, exc: Exception) -> LayerIndexError:
    said = str(getattr(exc, "orig", exc)).strip()
    return LayerIndexError(f"cannot open database {shown_url(url)}: {redact(said, url)}")


def _connect(engine: Engine, url: str) -> Connection:
    """A connection of ``engine``; one that cannot be made is LayerIndexError."""
    from sqlalchemy.exc import OperationalError

    try:
        return engine.connect()
    except OperationalError as exc:
        raise _cannot_open(url, exc) from exc


@contextlib.contextmanager
def _schema_change(engine: Engine, url: str) -> Iterator[Connection]:
    """One transaction for a change of schema, holding the database's schema lock: all of it
    is made or none (a process killed half-way leaves the database as it was), and processes
    started together make it once, one after the other. SQLite: ``BEGIN IMMEDIATE`` (its
    write lock; pysqlite would otherwise run each CREATE outside any transaction).
    PostgreSQL: an advisory lock held to the transaction's end (its DDL is transactional)."""
    from sqlalchemy import text

    with _connect(engine, url) as connection, connection.begin():
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        yield connection


SCHEMA_LOCK = 0x736368656D61  # "schema"; store.CRAWL_LOCK_KEY is the crawl's


def _create_at_head(engine: Engine, url: str) -> str | None:
    """Make the schema of an empty database; returns the revision it is then at (another
    process may have made it first, or something else: check_revision says)."""
    from sqlalchemy import inspect

    with _schema_change(engine, url) as connection:
        if inspect(connection).get_table_names():  # made while this process waited
            return current_revision(connection)
        if not _create_sqlite_at_head(connection):
            from alembic import command

            command.upgrade(_alembic_config(connection), "head")
        return current_revision(connection)


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


STREAM_ROWS = 2000  # rows a PostgreSQL server-side cursor sends at a time


class Reader:
    """A read-only DB-API connection: SQL is written once, with ``?`` placeholders, and adapted
    here to the driver's style (psycopg's ``%s``). The driver's errors become DatabaseError
    (``find``'s reader, ``find_messages``: LayerIndexError, "cannot read the index: …")."""

    def __init__(
        self,
        connection: Any,
        dialect: str,
        errors: type[Exception] = sqlite3.Error,
        engine: Engine | None = None,
        *,
        find_messages: bool = True,
    ) -> None:
        self.connection = connection
        self.dialect = dialect  # "sqlite" or "postgresql"
        self.errors = errors  # the driver's DB-API Error class
        self._engine = engine  # disposed on close when the reader made it
        self.find_messages = find_messages
        self._cursors = 0  # server-side cursors opened: their names

    @classmethod
    def from_engine(
        cls, engine: Engine, owned: bool = False, *, find_messages: bool = True
    ) -> Reader:
        """A reader on one of ``engine``'s pooled connections (closing returns it; with
        ``owned``, closing disposes of the engine too)."""
        errors = engine.dialect.loaded_dbapi.Error
        return cls(
            engine.raw_connection(),
            engine.dialect.name,
            errors,
            engine if owned else None,
            find_messages=find_messages,
        )

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Every row ``sql`` answers, at once: for answers of a bounded size."""
        try:
            cursor = self.connection.cursor()
            try:
                cursor.execute(self._placeholders(sql), tuple(params))
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except self.errors as exc:
            raise self._failed(exc) from exc

    def stream(self, sql: str, params: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows ``sql`` answers, as the database sends them: a big answer (an image's
        every path) is never held whole. SQLite steps its statement as rows are taken;
        psycopg reads the server's rows one at a time (``Cursor.stream``)."""
        try:
            if self.dialect == "sqlite":
                cursor = self.connection.cursor()
            else:
                # A server-side cursor: another may read beside it (diff reads two images at
                # once), which psycopg's single-row streams would not allow. Outside a
                # transaction (autocommit) it must be held past the statement's end.
                self._cursors += 1
                cursor = self.connection.cursor(
                    name=f"layerindex_{self._cursors}", withhold=self.connection.autocommit
                )
                cursor.itersize = STREAM_ROWS
            try:
                yield from cursor.execute(self._placeholders(sql), tuple(params))
            finally:
                cursor.close()
        except self.errors as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: Exception) -> Exception:
        if self.find_messages:
            return LayerIndexError(f"cannot read the index: {exc}")
        said = str(exc).strip()
        return DatabaseError(said.splitlines()[0] if said else repr(exc))

    def _placeholders(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

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


def aware_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back without their UTC zone; PostgreSQL keeps it."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def iso_utc(value: dt.datetime | None) -> str | None:
    """A timestamp as ISO 8601 in UTC, to the second (None stays None)."""
    when = aware_utc(value)
    return when.isoformat(timespec="seconds") if when else None


def timestamp(value: dt.datetime | str | None) -> dt.datetime | None:
    """A timestamp column as the DB-API hands it over: psycopg gives a datetime (in UTC),
    sqlite3 the text SQLAlchemy wrote (``2026-01-02 03:04:05.678901``, UTC without a zone)."""
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    return value


READER_MMAP_BYTES = 1 << 30


def open_reader(url: str, *, find_messages: bool = True) -> Reader:
    """Open ``url`` for reading at the latest schema. A missing or empty database is NoIndex
    (there is nothing to read), never created. A SQLite file is read through the stdlib, a
    PostgreSQL database through psycopg: SQLAlchemy, 0.15 s of a `find` call, stays unloaded.
    Without ``find_messages`` (the readers but ``find``), a URL is read by SQLAlchemy first
    (which says what is wrong with it) unless it is a SQLite file's, and the driver's errors
    are DatabaseError."""
    path = _sqlite_file(url)
    if path is None and not find_messages:
        _parsed_url(url)
    if _plain_postgres(url) and (reader := _postgres_reader(url, find_messages)) is not None:
        return reader
    if path is None:
        engine = open_database(url, create_empty=False)
        return Reader.from_engine(engine, owned=True, find_messages=find_messages)
    shown = url
    if not path.is_file():
        raise _no_sqlite_index(path)
    try:
        # mode=ro: find never writes; a crawler may be writing the same file (WAL).
        connection = sqlite3.connect(_read_only_uri(path), uri=True, timeout=30)
        # Pages through a memory map, not a read() each: ancestor checks are page-bound.
        connection.execute(f"PRAGMA mmap_size={READER_MMAP_BYTES}")
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        revision = None
        if "alembic_version" in tables:
            found = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = found[0] if found else None
    except sqlite3.DatabaseError as exc:
        raise LayerIndexError(f"cannot open database {shown}: {exc}") from exc
    reader = Reader(connection, "sqlite", find_messages=find_messages)
    return _checked(reader, shown, tables, revision)


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


def _postgres_reader(url: str, find_messages: bool) -> Reader | None:
    """A reader on a psycopg connection to ``url``; None without psycopg (the SQLAlchemy path
    then says what to install)."""
    try:
        import psycopg
    except ImportError:
        return None
    shown = shown_url(url)
    try:
        connection = psycopg.connect(libpq_url(url), autocommit=True)
    except psycopg.Error as exc:
        raise _cannot_open(url, exc) from exc
    reader = Reader(connection, "postgresql", psycopg.Error, find_messages=find_messages)
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


def _no_sqlite_index(path: Path) -> NoIndex:
    return NoIndex(
        f"there is no index at {path}; index an image first (layerindex index REF) "
        "or give the database with --db or LAYERINDEX_DB"
    )


def _read_only_uri(path: Path) -> str:
    """The SQLite URI that opens ``path`` read-only: SQLite itself refuses any write. A shared
    index in a directory this user cannot write is opened ``immutable`` unless a writer is at
    work (its ``-wal`` is there): SQLite cannot make the ``-shm`` it reads a WAL file with
    there, and without one it refuses to read."""
    uri = f"file:{quote(str(path))}?mode=ro"
    if not os.access(path.parent, os.W_OK) and not path.with_name(f"{path.name}-wal").exists():
        uri += "&immutable=1"
    return uri


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
    from sqlalchemy.exc import DBAPIError

    engine = create(url)
    try:
        with _schema_change(engine, url) as connection:
            before = current_revision(connection)
            command.upgrade(_alembic_config(connection), revision)
            after = current_revision(connection)
    except DBAPIError as exc:
        raise database_error(exc) from exc
    finally:
        engine.dispose()
    return before, after


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = create(url)
    try:
        with _schema_change(engine, url) as connection:
            command.downgrade(_alembic_config(connection), revision)
    finally:
        engine.dispose()
