"""The database schema (SQLAlchemy Core). Alembic owns it: every change here gets a migration.

Sizes matter (millions of entries): a path is stored once, split into an interned directory and an
interned basename, and an entry row is a handful of small integers keyed by the layer *content*
(``diffs``: the uncompressed tar, by ``diff_id``), so one tar shipped as gzip in one image and zstd
in another is indexed once.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("registry", Text, nullable=False),  # as users write it: "docker.io", "ghcr.io"
    Column("name", Text, nullable=False),  # "library/alpine"
    UniqueConstraint("registry", "name"),
)

# One row per (repository, tag, digest the tag pointed to): the tag's history.
tags = Table(
    "tags",
    metadata,
    Column("repository_id", Integer, ForeignKey("repositories.id"), primary_key=True),
    Column("tag", Text, primary_key=True),
    Column("digest", Text, primary_key=True),  # an image manifest or an index digest
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)

# One row per platform-specific image manifest in a repository.
images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repository_id", Integer, ForeignKey("repositories.id"), nullable=False),
    Column("digest", Text, nullable=False),
    Column("reference", Text, nullable=False),  # the reference as last indexed: "alpine:3.20"
    Column("index_digest", Text),  # the image index / manifest list it was reached through
    Column("media_type", Text, nullable=False),
    Column("platform", Text, nullable=False),  # "linux/arm64/v8"
    Column("config_digest", Text, nullable=False),
    Column("created", Text),  # the config's "created", as written
    Column("manifest", Text, nullable=False),  # raw manifest JSON (small; for inspect --raw)
    Column("config", Text, nullable=False),  # raw config JSON
    Column("indexed_at", DateTime(timezone=True)),  # NULL until every layer is indexed or skipped
    UniqueConstraint("repository_id", "digest"),
)

# Layer blobs, by compressed digest. diff_ref is set in the same transaction as its entries.
layers = Table(
    "layers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("digest", Text, nullable=False, unique=True),
    Column("diff_id", Text),  # from the image config's rootfs.diff_ids
    Column("media_type", Text, nullable=False),
    Column("size", BigInteger, nullable=False),  # compressed bytes, from the manifest
    Column("compression", Text),  # detected from the bytes: gzip, zstd, tar
    Column("diff_ref", Integer, ForeignKey("diffs.id")),  # set = indexed
    Column("skip_reason", Text),  # set = deliberately not indexed (foreign layer)
    Column("last_error", Text),  # the last failure, kept until a later attempt succeeds
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_attempt", DateTime(timezone=True)),
    # A worker fetching the layer holds a lease; a killed worker's lease expires.
    Column("lease_owner", Text),
    Column("lease_until", DateTime(timezone=True)),
)
Index(None, layers.c.diff_id)
Index(None, layers.c.diff_ref)  # entries → the layers (and images) holding them

image_layers = Table(
    "image_layers",
    metadata,
    Column("image_id", Integer, ForeignKey("images.id"), primary_key=True),
    Column("position", Integer, primary_key=True),  # 0 = base
    Column("layer_id", Integer, ForeignKey("layers.id"), nullable=False),
)
Index(None, image_layers.c.layer_id)

# Indexed layer contents (uncompressed tar streams), by diff_id.
diffs = Table(
    "diffs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("diff_id", Text, nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),  # uncompressed bytes
    Column("entry_count", Integer, nullable=False),
    Column("indexed_at", DateTime(timezone=True), nullable=False),
)

dirs = Table(
    "dirs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False, unique=True),  # "/usr/bin"
)

names = Table(
    "names",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),  # "kubectl"
)

# One row per path in a layer's tar. Whiteouts are rows of type "whiteout" at the deleted path;
# an opaque marker is a row of type "opaque" at "<dir>/.wh..wh..opq". The ids refer to diffs,
# dirs and names without foreign keys: checking them cost PostgreSQL a trigger per row and key
# (migration 0007); they come from the transaction that writes the row.
entries = Table(
    "entries",
    metadata,
    Column("diff_ref", Integer, primary_key=True),
    Column("dir_id", Integer, primary_key=True),
    Column("name_id", Integer, primary_key=True),
    Column("type", SmallInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mode", Integer, nullable=False),
    Column("uid", Integer, nullable=False),
    Column("gid", Integer, nullable=False),
    Column("mtime", BigInteger, nullable=False),
    Column("link_target", Text),
    Column("sha256", Text),
    sqlite_with_rowid=False,
)
# find by path / by basename in a batch of layers: one seek per (name, layer), then the dir;
# with the type, what later layers hold at a match's ancestors needs no row (migration 0006).
Index(
    "ix_entries_name_layer",
    entries.c.name_id,
    entries.c.diff_ref,
    entries.c.dir_id,
    entries.c.type,
)
# find --digest: which images ship this exact file. Partial: only hashed files have a sha256.
# On PostgreSQL too (migration 0002 makes both), but naming its postgresql_where here would
# import SQLAlchemy's PostgreSQL dialect into every command on SQLite (~30 ms of `layerindex
# index`); Alembic's comparison of the model with a database does not look at predicates.
Index("ix_entries_sha256", entries.c.sha256, sqlite_where=entries.c.sha256.isnot(None))

# Substring and glob search indexes over the interned dirs and names, made by migration
# 0002_path_search and not modelled here: SQLite FTS5 trigram tables (with their shadow tables)
# kept in sync by triggers, PostgreSQL pg_trgm GIN indexes. Alembic's comparisons skip them.
SEARCH_TABLES = ("dirs_fts", "names_fts")
SEARCH_INDEXES = ("ix_dirs_path_trgm", "ix_names_name_trgm")


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic hook (env.py, the migration test): leave the search indexes out of comparisons."""
    if name is None:
        return True
    if type_ == "table":
        return not any(name == t or name.startswith(t + "_") for t in SEARCH_TABLES)
    if type_ == "index":
        return name not in SEARCH_INDEXES
    return True


# --- scheduled crawls ----------------------------------------------------------------------------

# One row per crawl run: what it did, for `layerindex runs`.
runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", Text, nullable=False),  # running, ok, failed, interrupted, killed
    Column("worker", Text, nullable=False),  # host:pid
    Column("images", Integer, nullable=False, default=0),
    Column("images_unchanged", Integer, nullable=False, default=0),
    Column("images_failed", Integer, nullable=False, default=0),
    Column("layers_indexed", Integer, nullable=False, default=0),
    Column("layers_known", Integer, nullable=False, default=0),
    Column("layers_skipped", Integer, nullable=False, default=0),
    Column("layers_failed", Integer, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),  # blob bytes downloaded
    Column("errors", Text),  # JSON: [{"image": …, "error": …}]
    # images not checked: still in their back-off after failures (migration 0008)
    Column("images_deferred", Integer, nullable=False, default=0, server_default="0"),
    Column("deferred_until", DateTime(timezone=True)),  # the earliest of their back-offs' ends
    Column("lists_failed", Integer, nullable=False, default=0, server_default="0"),  # no tags
)

# One row per reference a crawl keeps fresh: when it was checked, its failures and back-off,
# and the lease a worker holds while it checks it.
targets = Table(
    "targets",
    metadata,
    Column("reference", Text, primary_key=True),  # canonical: "docker.io/library/alpine:3.20"
    Column("last_checked", DateTime(timezone=True)),
    Column("last_digest", Text),
    Column("failures", Integer, nullable=False, default=0),  # in a row
    Column("last_error", Text),
    Column("next_attempt", DateTime(timezone=True)),  # back-off after failures
    Column("lease_owner", Text),
    Column("lease_until", DateTime(timezone=True)),
)
