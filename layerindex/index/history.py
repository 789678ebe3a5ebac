"""What the index remembers over time: the crawl runs (``layerindex runs``), what each tag of
a repository pointed to (``layerindex tags``) and which tags point to an image now
(``inspect``). Read through a ``database.Reader``; ``runs.py`` writes the runs."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from layerindex.index.database import Reader, iso_utc, timestamp
from layerindex.index.resolve import IndexedImage

RUN_COLUMNS = (  # as `layerindex runs` shows them
    "id",
    "started_at",
    "finished_at",
    "status",
    "worker",
    "images",
    "images_unchanged",
    "images_failed",
    "images_deferred",
    "deferred_until",
    "lists_failed",
    "layers_indexed",
    "layers_known",
    "layers_skipped",
    "layers_failed",
    "bytes",
    "errors",
)


@dataclass(frozen=True)
class Run:
    """A crawl run as ``runs`` records it; times in ISO 8601, UTC."""

    id: int
    started_at: str
    finished_at: str | None
    status: str  # running, ok, failed, interrupted, killed
    worker: str  # host:pid
    images: int
    images_unchanged: int
    images_failed: int
    images_deferred: int
    deferred_until: str | None
    lists_failed: int
    layers_indexed: int
    layers_known: int
    layers_skipped: int
    layers_failed: int
    bytes: int
    errors: list[dict[str, str]]  # {"image": …, "error": …}


def list_runs(reader: Reader, limit: int) -> list[Run]:
    """The ``limit`` newest runs, newest first."""
    out = []
    for row in reader.rows(
        f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id DESC LIMIT ?", [limit]
    ):
        values = dict(zip(RUN_COLUMNS, row, strict=True))
        for key in ("started_at", "finished_at", "deferred_until"):
            values[key] = iso_utc(timestamp(values[key]))
        values["errors"] = json.loads(values["errors"]) if values["errors"] else []
        out.append(Run(**values))
    return out


@dataclass(frozen=True)
class TagSeen:
    """A digest a tag pointed to, first and last seen then (ISO 8601, UTC)."""

    repository: str  # registry/repository
    tag: str
    digest: str
    first_seen: str | None
    last_seen: str | None


TAG_ROWS = (
    "SELECT t.tag, t.digest, t.first_seen, t.last_seen "
    "FROM tags t JOIN repositories r ON r.id = t.repository_id "
    "WHERE r.registry = ? AND r.name = ?"
)


def tag_history(reader: Reader, registry: str, repository: str, tag: str | None) -> list[TagSeen]:
    """Every digest each tag of a repository pointed to, with when it was first and last seen."""
    sql, params = TAG_ROWS, [registry, repository]
    if tag is not None:
        sql, params = sql + " AND t.tag = ?", [*params, tag]
    return [
        TagSeen(
            f"{registry}/{repository}",
            row_tag,
            digest,
            iso_utc(timestamp(first_seen)),
            iso_utc(timestamp(last_seen)),
        )
        for row_tag, digest, first_seen, last_seen in reader.rows(
            sql + " ORDER BY t.tag, t.first_seen", params
        )
    ]


def current_tags(reader: Reader, image: IndexedImage) -> list[str]:
    """Tags of the image's repository whose latest digest is this image or its index."""
    latest: dict[str, tuple[dt.datetime | None, dt.datetime | None, str]] = {}
    for tag, digest, first_seen, last_seen in reader.rows(
        TAG_ROWS, [image.registry, image.repository]
    ):
        # A tag's history keeps every digest it pointed to; the one seen last is current.
        seen = (timestamp(last_seen), timestamp(first_seen), digest)
        if tag not in latest or seen > latest[tag]:
            latest[tag] = seen
    mine = {image.digest, image.index_digest}
    return sorted(tag for tag, (_, _, digest) in latest.items() if digest in mine)
