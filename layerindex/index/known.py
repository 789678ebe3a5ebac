"""What the index already holds of an image about to be crawled, read through the plain DB-API
``Reader`` (database.py): the crawler asks before it has opened the writer's Engine, so that
the first walks start before SQLAlchemy is even imported."""

from __future__ import annotations

from dataclasses import dataclass

from layerindex.index.database import Reader, among


@dataclass(frozen=True)
class StoredImage:
    id: int
    digest: str
    platform: str
    layers: int
    complete: bool


def images_for(reader: Reader, registry: str, repository: str, digest: str) -> list[StoredImage]:
    """The images known for a manifest or index digest, and whether each is complete."""
    rows = reader.rows(
        "SELECT i.id, i.digest, i.platform, i.indexed_at IS NOT NULL,"
        " (SELECT count(*) FROM image_layers il WHERE il.image_id = i.id)"
        " FROM images i JOIN repositories r ON r.id = i.repository_id"
        " WHERE r.registry = ? AND r.name = ? AND (i.digest = ? OR i.index_digest = ?)"
        " ORDER BY i.platform",
        (registry, repository, digest, digest),
    )
    return [StoredImage(i, d, p, int(n), bool(c)) for i, d, p, c, n in rows]


def indexed_diff_ids(reader: Reader, diff_ids: list[str]) -> set[str]:
    """Which of ``diff_ids`` (layer contents) the index holds."""
    if not diff_ids:
        return set()
    where, params = among(reader.dialect, "diff_id", diff_ids)
    return {row[0] for row in reader.rows(f"SELECT diff_id FROM diffs WHERE {where}", params)}


def failing_layers(reader: Reader, digests: list[str]) -> set[str]:
    """Which of the layers ``digests`` name failed more than once, their last attempt too: a
    crawl may be leaving them alone for a while (crawler.backoff)."""
    if not digests:
        return set()
    where, params = among(reader.dialect, "digest", digests)
    sql = f"SELECT digest FROM layers WHERE {where} AND last_error IS NOT NULL AND attempts > 1"
    return {row[0] for row in reader.rows(sql, params)}
