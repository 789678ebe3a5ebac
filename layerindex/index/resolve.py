"""Which indexed images a reference names: the one answer every reader of the index uses
(``find --image``, ``ls``, ``layers``, ``inspect``, ``diff``, ``get``).

A reference with a digest names the images of that digest, a platform image's or an index's
(whose platform images were indexed); a tag names what its digest was when last seen. Plain
SQL over a ``database.Reader``: no SQLAlchemy, so a command that only reads starts fast.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerindex.errors import NotFound, UsageError
from layerindex.index.database import Reader, timestamp
from layerindex.registry.platforms import pick_platforms

if TYPE_CHECKING:
    from layerindex.reference import Reference


@dataclass(frozen=True)
class IndexedImage:
    """One platform-specific image as the index holds it."""

    id: int
    reference: str
    registry: str
    repository: str
    digest: str
    index_digest: str | None
    media_type: str
    platform: str
    manifest: str  # the raw JSON, exactly as fetched
    config: str
    indexed_at: dt.datetime | None = None  # None until every layer is indexed or skipped


def images_named(reader: Reader, ref: Reference) -> list[IndexedImage]:
    """The indexed images ``ref`` names, by platform. A tag the index never saw is NotFound;
    a digest it does not hold names no image."""
    digest = ref.digest
    if digest is None:
        latest = reader.rows(
            "SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
            "WHERE r.registry = ? AND r.name = ? AND t.tag = ? "
            "ORDER BY t.last_seen DESC LIMIT 1",
            [ref.registry, ref.repository, ref.tag],
        )
        if not latest:
            raise NotFound(f"{ref.familiar()} is not indexed; run: layerindex index {ref}")
        digest = latest[0][0]
    return images_of(reader, ref.registry, ref.repository, digest)


def images_of(reader: Reader, registry: str, repository: str, digest: str) -> list[IndexedImage]:
    """The indexed images of a repository's manifest digest: the platform image of that
    digest, or the platform images of the index of that digest; by platform."""
    rows = reader.rows(
        "SELECT i.id, i.reference, r.registry, r.name, i.digest, i.index_digest, i.media_type, "
        "i.platform, i.manifest, i.config, i.indexed_at "
        "FROM images i JOIN repositories r ON r.id = i.repository_id "
        "WHERE r.registry = ? AND r.name = ? AND (i.digest = ? OR i.index_digest = ?) "
        "ORDER BY i.platform",
        [registry, repository, digest, digest],
    )
    return [
        IndexedImage(id, reference, registry, repository, digest, index_digest, media_type,
                     platform, manifest, config, timestamp(indexed_at))
        for (id, reference, registry, repository, digest, index_digest, media_type, platform,
             manifest, config, indexed_at) in rows
    ]  # fmt: skip


def image_ids(reader: Reader, refs: Sequence[Reference]) -> list[int]:
    """The ids of the images a list of references names."""
    return [image.id for ref in refs for image in images_named(reader, ref)]


@dataclass(frozen=True)
class Wording:
    """What a command says when a reference names no image of the platform asked for, or
    several: format strings of ``ref`` (familiar), ``reference``, ``platform``,
    ``platforms`` (those indexed) and ``count``."""

    no_platform: str
    several: str


LISTING = Wording(
    no_platform="{ref} has no indexed {platform} image; indexed: {platforms}",
    several="{ref} names {count} indexed images ({platforms}); pick one with --platform",
)


def the_image(
    reader: Reader, ref: Reference, platform: str | None, wording: Wording = LISTING
) -> IndexedImage:
    """The one indexed image ``ref`` names; ``platform`` picks one of an index's as ``index``
    does (``pick_platforms``: linux/amd64 by default). None, or several, is an error worded by
    ``wording``."""
    found = images_named(reader, ref)
    if not found:
        raise NotFound(f"{ref.familiar()} is not indexed; run: layerindex index {ref}")
    indexed = ", ".join(image.platform for image in found)
    found = pick_platforms(platform, found, lambda image: image.platform)
    if not found:
        raise NotFound(
            wording.no_platform.format(
                ref=ref.familiar(), reference=ref, platform=platform, platforms=indexed
            )
        )
    if len(found) > 1:
        raise UsageError(
            wording.several.format(
                ref=ref.familiar(),
                count=len(found),
                platforms=", ".join(image.platform for image in found),
            )
        )
    return found[0]
