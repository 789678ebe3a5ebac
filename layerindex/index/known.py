"""What the index already holds of an image about to be crawled, read through the plain DB-API
``Reader`` (database.py): the crawler asks before it has opened the writer's Engine, so that
the first walks start before SQLAlchemy is even imported."""

from __future__ import annotations

from dataclasses import dataclass

from layerindex.index.database import Reader, among
from layerindex.index.resolve import images_of


@dataclass(frozen=True)
class StoredImage:
    id: int
    digest: str
    platform: str
    layers: int
    complete: bool


def images_for(reader: Reader, registry: str, repository: str, digest: str) -> list[StoredImage]:
    """The images known for a manifest or index digest (``resolve.images_of``), and whether
    each is complete."""
    found = images_of(reader, registry, repository, digest)
    if not found:
        return []
    wanted, params = among(reader.dialect, "image_id", [i.id for i in found])
    layer_counts = dict(
        reader.rows(
            f"SELECT image_id, count(*) FROM image_layers WHERE {wanted} GROUP BY image_id",
            params,
        )
    )
    return [
        StoredImage(i.id, i.digest, i.platform, layer_counts.get(i.id, 0), i.indexed_at is not None)
        for i in found
    ]


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
