"""Writing to the index: images, their layers, and each layer's entries in one transaction."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, Table, func, select, text, true, update
from sqlalchemy.engine import Connection

from layerindex.errors import CrawlLocked
from layerindex.index.database import aware_utc
from layerindex.index.schema import (
    diffs,
    dirs,
    image_layers,
    images,
    layers,
    names,
    repositories,
    tags,
)
from layerindex.layer.compression import prefetched
from layerindex.layer.entries import (
    OPAQUE_MARKER,
    TYPE_CODES,
    Entry,
    EntryType,
    split_path,
)

BATCH_ROWS = 5000
WALK_AHEAD_BATCHES = 2  # batches the walking thread may have ready while one is written
INTERN_CACHE_MAX = 200_000  # ids kept in memory per table; memory stays bounded on any corpus
SQL_IN_CHUNK = 500  # bound parameters per IN (...) lookup
STAGE_STRINGS, STAGE_ENTRIES = "layerindex_stage_strings", "layerindex_stage_entries"
ENTRY_KEY = ("diff_ref", "dir_id", "name_id")
ENTRY_COLUMNS = (*ENTRY_KEY, "type", "size", "mode", "uid", "gid", "mtime", "link_target", "sha256")


def _upsert_entries_sql(source: str) -> str:
    """INSERT of entry rows from ``source`` (VALUES or a SELECT); a path written twice in one
    layer keeps the last (ON CONFLICT)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in ENTRY_COLUMNS if c not in ENTRY_KEY)
    return (
        f"INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) {source} "
        f"ON CONFLICT ({', '.join(ENTRY_KEY)}) DO UPDATE SET {updates}"
    )


UPSERT_ENTRY_VALUES = _upsert_entries_sql(f"VALUES ({', '.join(['?'] * len(ENTRY_COLUMNS))})")
UPSERT_STAGED_ENTRIES = _upsert_entries_sql(
    f"SELECT {', '.join(ENTRY_COLUMNS)} FROM {STAGE_ENTRIES}"
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class LayerRecord:
    """A layer as an image manifest lists it."""

    digest: str
    media_type: str
    size: int
    diff_id: str | None


@dataclass(frozen=True)
class ImageRecord:
    """A platform-specific image manifest, with what the index keeps of it."""

    registry: str
    repository: str
    digest: str
    reference: str
    index_digest: str | None
    media_type: str
    platform: str
    config_digest: str
    created: str | None
    manifest: str
    config: str
    layers: Sequence[LayerRecord]


class WalkedLayer(Protocol):
    """What index_layer needs of a walker (layerindex.layer.walker.LayerWalker)."""

    compression: str
    uncompressed_size: int

    def __iter__(self) -> Iterator[Entry]: ...


@dataclass(frozen=True)
class LayerState:
    id: int
    digest: str
    diff_id: str | None
    indexed: bool
    skip_reason: str | None
    attempts: int = 0  # failed or successful fetches so far
    last_attempt: dt.datetime | None = None
    last_error: str | None = None
    size: int | None = None  # the manifest's: the registry may not send more


class Interner:
    """Ids of interned strings (directory paths or basenames), created on first use."""

    def __init__(self, table: Table, column: str, search_table: str | None = None) -> None:
        self.table = table
        self.column = table.c[column]
        self.search_table = search_table  # SQLite's FTS5 trigram table over this column
        self.cache: dict[str, int] = {}

    def ids(self, connection: Connection, values: Iterable[str]) -> dict[str, int]:
        wanted = set(values)
        found = {v: self.cache[v] for v in wanted if v in self.cache}
        missing = sorted(wanted - found.keys())
        if missing:
            if connection.dialect.name == "sqlite":
                found.update(self._add_sqlite(connection, missing))
            else:
                found.update(self._add_postgresql(connection, missing))
            if len(self.cache) > INTERN_CACHE_MAX:
                self.cache.clear()
            # Ids made inside a transaction that rolls back must not be reused: the caller
            # clears the cache on rollback (see Store.index_layer).
            self.cache.update((v, found[v]) for v in missing)
        return found

    def _add_sqlite(self, connection: Connection, missing: list[str]) -> dict[str, int]:
        table, column = self.table.name, self.column.name
        # One writer: the rows this INSERT adds are exactly those with larger ids.
        newest = connection.exec_driver_sql(f"SELECT max(id) FROM {table}").scalar() or 0
        connection.exec_driver_sql(
            f"INSERT INTO {table} ({column}) VALUES (?) ON CONFLICT DO NOTHING",
            [(v,) for v in missing],
        )
        found: dict[str, int] = dict(
            connection.exec_driver_sql(
                f"SELECT {column}, id FROM {table} WHERE id > ?", (newest,)
            ).all()
        )
        if self.search_table is not None:
            # The new rows into the trigram index in one statement (migration 0004).
            connection.exec_driver_sql(
                f"INSERT INTO {self.search_table}(rowid, {column}) "
                f"SELECT id, {column} FROM {table} WHERE id > ?",
                (newest,),
            )
        unknown = [v for v in missing if v not in found]  # there before, not in the cache
        for start in range(0, len(unknown), SQL_IN_CHUNK):
            chunk = unknown[start : start + SQL_IN_CHUNK]
            rows = connection.execute(
                select(self.column, self.table.c.id).where(self.column.in_(chunk))
            )
            found.update((value, ident) for value, ident in rows)
        return found

    def _add_postgresql(self, connection: Connection, missing: list[str]) -> dict[str, int]:
        """COPY into a staging table, then one INSERT … SELECT and one join read the ids back
        (other writers may add the same strings at once: ON CONFLICT waits for them)."""
        table, column = self.table.name, self.column.name
        with _staged(connection, STAGE_STRINGS, ["value"], ((v,) for v in missing)) as stage:
            connection.exec_driver_sql(
                f"INSERT INTO {table} ({column}) SELECT value FROM {stage} ORDER BY value "
                "ON CONFLICT DO NOTHING"
            )
            rows = connection.exec_driver_sql(
                f"SELECT t.{column}, t.id FROM {table} t JOIN {stage} s ON t.{column} = s.value"
            ).all()
        return dict(rows)


def _make_stages(connection: Connection) -> None:
    """PostgreSQL: the temporary tables COPY fills, emptied at commit. Made in each layer's
    transaction (cheap when they exist): a rollback would undo the ones it made."""
    for name, columns in (
        (STAGE_STRINGS, "(value text NOT NULL)"),
        (STAGE_ENTRIES, "(LIKE entries)"),
    ):
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} {columns} ON COMMIT DELETE ROWS"
        )


@contextlib.contextmanager
def _staged(
    connection: Connection, stage: str, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> Iterator[str]:
    """PostgreSQL: ``rows`` in the staging table ``stage`` (COPY FROM STDIN, in C) for the
    statements of the block; the table is emptied after it, for the next batch."""
    psycopg_connection = connection.connection.driver_connection
    assert psycopg_connection is not None
    with (
        psycopg_connection.cursor() as cursor,
        cursor.copy(f"COPY {stage} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
    yield stage
    connection.exec_driver_sql(f"DELETE FROM {stage}")


def _batched(walk: Iterable[Entry]) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    for entry in walk:
        batch.append(entry)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def dialect_insert(connection: Connection, table: Table) -> Any:
    """INSERT with ON CONFLICT support, for whichever of SQLite and PostgreSQL this is."""
    # Imported here: the PostgreSQL dialect costs ~50 ms to import, and SQLite users pay none.
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


class Store:
    """The write side of the index. One per process; not shared between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dirs = Interner(dirs, "path", "dirs_fts")
        self.names = Interner(names, "name", "names_fts")

    # -- images ---------------------------------------------------------------------------------

    def record_tag(self, registry: str, repository: str, tag: str, digest: str) -> None:
        """Note that ``tag`` points at ``digest`` now (the tag's history keeps every digest)."""
        now = utcnow()
        with self.engine.begin() as connection:
            repository_id = self._repository_id(connection, registry, repository)
            stmt = dialect_insert(connection, tags).values(
                repository_id=repository_id, tag=tag, digest=digest, first_seen=now, last_seen=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["repository_id", "tag", "digest"], set_={"last_seen": now}
            )
            connection.execute(stmt)

    def record_reference(self, image_ids: Sequence[int], reference: str) -> None:
        """Images found unchanged under ``reference``: it is the one they were last indexed as."""
        with self.engine.begin() as connection:
            connection.execute(
                update(images).where(images.c.id.in_(image_ids)).values(reference=reference)
            )

    def record_image(self, image: ImageRecord) -> tuple[int, list[LayerState]]:
        """Upsert the image and its layer list; returns its id and each layer's state."""
        with self.engine.begin() as connection:
            repository_id = self._repository_id(connection, image.registry, image.repository)
            values = {
                "reference": image.reference,
                "index_digest": image.index_digest,
                "media_type": image.media_type,
                "platform": image.platform,
                "config_digest": image.config_digest,
                "created": image.created,
                "manifest": image.manifest,
                "config": image.config,
            }
            stmt = dialect_insert(connection, images).values(
                repository_id=repository_id, digest=image.digest, **values
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["repository_id", "digest"], set_=values
            )
            connection.execute(stmt)
            image_id = connection.execute(
                select(images.c.id).where(
                    images.c.repository_id == repository_id, images.c.digest == image.digest
                )
            ).scalar_one()
            for layer in image.layers:
                stmt = dialect_insert(connection, layers).values(
                    digest=layer.digest,
                    diff_id=layer.diff_id,
                    media_type=layer.media_type,
                    size=layer.size,
                    attempts=0,
                )
                connection.execute(stmt.on_conflict_do_nothing())
            by_digest = {
                row.digest: row
                for row in connection.execute(
                    select(layers).where(layers.c.digest.in_([lr.digest for lr in image.layers]))
                )
            }
            connection.execute(image_layers.delete().where(image_layers.c.image_id == image_id))
            if image.layers:
                connection.execute(
                    image_layers.insert(),
                    [
                        {"image_id": image_id, "position": i, "layer_id": by_digest[lr.digest].id}
                        for i, lr in enumerate(image.layers)
                    ],
                )
            states = [
                LayerState(
                    id=row.id,
                    digest=row.digest,
                    diff_id=row.diff_id,
                    indexed=row.diff_ref is not None,
                    skip_reason=row.skip_reason,
                    attempts=row.attempts,
                    last_attempt=aware_utc(row.last_attempt),
                    last_error=row.last_error,
                    size=row.size,
                )
                for row in (by_digest[lr.digest] for lr in image.layers)
            ]
        return image_id, states

    def finish_image(self, image_id: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(images).where(images.c.id == image_id).values(indexed_at=utcnow())
            )

    @staticmethod
    def _repository_id(connection: Connection, registry: str, name: str) -> int:
        stmt = dialect_insert(connection, repositories).values(registry=registry, name=name)
        connection.execute(stmt.on_conflict_do_nothing())
        return int(
            connection.execute(
                select(repositories.c.id).where(
                    repositories.c.registry == registry, repositories.c.name == name
                )
            ).scalar_one()
        )

    # -- layers ---------------------------------------------------------------------------------

    def link_known_diff(self, layer: LayerState) -> bool:
        """Point ``layer`` at already indexed contents with its diff_id; True if there were any.

        The same tar shipped under another compression has another digest but the same diff_id:
        its rows are already here, so nothing is downloaded.
        """
        if layer.diff_id is None:
            return False
        with self.engine.begin() as connection:
            diff_ref = connection.execute(
                select(diffs.c.id).where(diffs.c.diff_id == layer.diff_id)
            ).scalar_one_or_none()
            if diff_ref is None:
                return False
            connection.execute(
                update(layers)
                .where(layers.c.id == layer.id)
                .values(diff_ref=diff_ref, last_error=None)
            )
        return True

    def index_layer(self, layer: LayerState, walk: WalkedLayer) -> int:
        """Store every entry of ``walk`` and mark the layer indexed, all in one transaction.

        ``walk`` raises on a corrupt layer or a digest mismatch (at the latest when it ends):
        then nothing of the layer is committed, and the next run tries it again.
        """
        try:
            with self.engine.begin() as connection:
                diff_ref = connection.execute(
                    diffs.insert()
                    .values(
                        diff_id=layer.diff_id or layer.digest,
                        size=0,
                        entry_count=0,
                        indexed_at=utcnow(),
                    )
                    .returning(diffs.c.id)
                ).scalar_one()
                if connection.dialect.name != "sqlite":
                    _make_stages(connection)
                count = 0
                # The walk runs in a thread one batch ahead: it parses while this one writes
                # (the database driver releases the GIL while it steps). An error in the walk,
                # DigestMismatch at its end included, is raised here, inside the transaction.
                batches = prefetched(_batched(walk), WALK_AHEAD_BATCHES, "layerindex-walk")
                try:
                    for batch in batches:
                        count += self._write_entries(connection, diff_ref, batch)
                finally:
                    batches.close()  # stops the walk before the caller closes the blob stream
                connection.execute(
                    update(diffs)
                    .where(diffs.c.id == diff_ref)
                    .values(size=walk.uncompressed_size, entry_count=count, indexed_at=utcnow())
                )
                connection.execute(
                    update(layers)
                    .where(layers.c.id == layer.id)
                    .values(
                        diff_ref=diff_ref,
                        compression=walk.compression,
                        last_error=None,
                        attempts=layers.c.attempts + 1,
                        last_attempt=utcnow(),
                    )
                )
        except BaseException:
            # Ids interned inside the rolled-back transaction no longer exist.
            self.dirs.cache.clear()
            self.names.cache.clear()
            raise
        return count

    def _write_entries(self, connection: Connection, diff_ref: int, batch: list[Entry]) -> int:
        if not batch:
            return 0
        keyed: dict[tuple[str, str], Entry] = {}
        for entry in batch:
            if entry.type is EntryType.OPAQUE:
                # Stored at the marker's own path, so a directory and its opaque mark coexist.
                keyed[(entry.path, OPAQUE_MARKER)] = entry
            else:
                keyed[split_path(entry.path)] = entry  # a path written twice: the last wins
        dir_ids = self.dirs.ids(connection, (d for d, _ in keyed))
        name_ids = self.names.ids(connection, (n for _, n in keyed))
        rows = [
            (
                diff_ref,
                dir_ids[d],
                name_ids[n],
                TYPE_CODES[e.type],
                e.size,
                e.mode,
                e.uid,
                e.gid,
                e.mtime,
                e.link_target,
                e.sha256,
            )
            for (d, n), e in keyed.items()
        ]
        if connection.dialect.name == "sqlite":
            # The hot path: plain DB-API executemany, 3x faster than Core with dict rows.
            connection.exec_driver_sql(UPSERT_ENTRY_VALUES, rows)
        else:
            with _staged(connection, STAGE_ENTRIES, ENTRY_COLUMNS, rows):
                connection.exec_driver_sql(UPSERT_STAGED_ENTRIES)
        return len(rows)

    def record_skip(self, layer: LayerState, reason: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(layers).where(layers.c.id == layer.id).values(skip_reason=reason)
            )

    def record_failure(self, layer: LayerState, message: str) -> None:
        """Keep the error visible (``layerindex layers``) until an attempt succeeds."""
        with self.engine.begin() as connection:
            connection.execute(
                update(layers)
                .where(layers.c.id == layer.id)
                .values(
                    last_error=message,
                    attempts=layers.c.attempts + 1,
                    last_attempt=utcnow(),
                )
            )

    def image_entry_count(self, image_id: int) -> int:
        """Entries in the image's indexed layers (each layer counted once per position)."""
        with self.engine.connect() as connection:
            total = connection.execute(
                select(func.coalesce(func.sum(diffs.c.entry_count), 0))
                .select_from(image_layers)
                .join(layers, layers.c.id == image_layers.c.layer_id)
                .join(diffs, diffs.c.id == layers.c.diff_ref)
                .where(image_layers.c.image_id == image_id)
            ).scalar_one()
        return int(total)

    # -- leases: one fetcher per layer, across threads, processes and machines -----------------

    def claim_layer(
        self, layer: LayerState, owner: str, seconds: float, *, force: bool = False
    ) -> bool:
        """Take the layer's lease unless it is indexed or another live lease holds it
        (``force``: whatever lease there is; for a crawl holding the database's crawl lock,
        any other lease was left by a process that is gone).

        One conditional UPDATE: atomic on SQLite and PostgreSQL alike (an equivalent of
        SELECT … FOR UPDATE SKIP LOCKED for a single known row).
        """
        now = utcnow()
        with self.engine.begin() as connection:
            result = connection.execute(
                update(layers)
                .where(
                    layers.c.id == layer.id,
                    layers.c.diff_ref.is_(None),
                    true()
                    if force
                    else layers.c.lease_until.is_(None)
                    | (layers.c.lease_until < now)
                    | (layers.c.lease_owner == owner),
                )
                .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=seconds))
            )
        return result.rowcount == 1

    def renew_lease(self, layer: LayerState, owner: str, seconds: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(layers)
                .where(layers.c.id == layer.id, layers.c.lease_owner == owner)
                .values(lease_until=utcnow() + dt.timedelta(seconds=seconds))
            )

    def release_lease(self, layer: LayerState, owner: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(layers)
                .where(layers.c.id == layer.id, layers.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def layer_indexed(self, layer: LayerState) -> bool:
        with self.engine.connect() as connection:
            diff_ref = connection.execute(
                select(layers.c.diff_ref).where(layers.c.id == layer.id)
            ).scalar_one()
        return diff_ref is not None

    def analyze(self) -> None:
        """Refresh SQLite's planner statistics after a batch of writes (0.2 s on 10M entries).

        Without them SQLite may answer ``find --name`` by walking every layer's entries
        instead of the name index (1 s instead of 15 ms on 10M entries). PostgreSQL's
        autovacuum keeps its own statistics.
        """
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA analysis_limit=1000")
            connection.exec_driver_sql("ANALYZE")


CRAWL_LOCK_KEY = 0x6C61796572  # "layer": the crawl's advisory lock (database.SCHEMA_LOCK: DDL's)


class Writer:
    """The index's writing side for one process: the engine, a new Store for each thread that
    writes (a Store's caches belong to one transaction at a time), SQLite's one writer at a time
    (``turn``: threads take turns instead of timing out on its lock), the crawl lock, and the
    heartbeat that keeps a layer's lease alive. The driver's errors come out as DatabaseError
    (``database.open_database``'s engines)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.one_writer = engine.dialect.name == "sqlite"
        self.turn: contextlib.AbstractContextManager[object] = (
            threading.RLock() if self.one_writer else contextlib.nullcontext()
        )

    def new_store(self) -> Store:
        return Store(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def crawl_lock(self, holder: str) -> Iterator[None]:
        """Hold the database's crawl lock, or fail at once (CrawlLocked) saying who holds it;
        ``holder`` names this process to the next one that asks."""
        if self.engine.dialect.name == "sqlite":
            with _sqlite_crawl_lock(self.engine.url.database, holder):
                yield
            return
        with self.engine.connect() as connection:
            held = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": CRAWL_LOCK_KEY}
            ).scalar_one()
            if not held:
                raise CrawlLocked(
                    "another crawl is running on this database; wait for it, or run every crawl "
                    "with --worker to share the work between them"
                )
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": CRAWL_LOCK_KEY})
                connection.commit()

    @contextlib.contextmanager
    def heartbeat(self, layer: LayerState, owner: str, seconds: float) -> Iterator[None]:
        """Keep ``owner``'s lease of ``layer`` alive (renewed every third of ``seconds``) while
        a long layer downloads."""
        stop = threading.Event()

        def renew() -> None:
            store = self.new_store()
            while not stop.wait(seconds / 3):
                with contextlib.suppress(Exception), self.turn:
                    store.renew_lease(layer, owner, seconds)

        thread = threading.Thread(target=renew, name="layerindex-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@contextlib.contextmanager
def _sqlite_crawl_lock(database: str | None, holder: str) -> Iterator[None]:
    """The crawl lock of a SQLite file: ``flock`` on ``FILE.lock``, which says who holds it."""
    if not database or database == ":memory:":
        yield
        return
    path = Path(database).with_name(Path(database).name + ".lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            held_by = handle.read().strip() or "another process"
            raise CrawlLocked(
                f"another crawl is running on {database} ({held_by}); wait for it to "
                "finish, or stop it — two crawls on one SQLite database would only queue"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {holder}, since {time.ctime()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
