"""Reading the index: find a path, list images, an image's layers, a layer's or image's files."""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Engine, case, func, or_, select, tuple_
from sqlalchemy.engine import Connection

from layerindex.errors import NotFound, UsageError
from layerindex.index import find
from layerindex.index.database import Reader
from layerindex.index.find import FindFilters, image_ids
from layerindex.index.patterns import PathPattern
from layerindex.index.schema import (
    diffs,
    dirs,
    entries,
    image_layers,
    images,
    layers,
    names,
    repositories,
)
from layerindex.layer import overlay
from layerindex.layer.entries import (
    OPAQUE_MARKER,
    TYPE_CODES,
    TYPE_NAMES,
    EntryType,
    split_path,
    stored_path,
)
from layerindex.registry.platforms import pick_platforms

if TYPE_CHECKING:
    from layerindex.reference import Reference

Row = dict[str, Any]


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


@dataclass(frozen=True)
class ImageLayer:
    """A layer at its position in an image; ``diff_ref`` is set once it is indexed."""

    position: int
    digest: str
    diff_id: str | None
    media_type: str
    size: int  # compressed
    diff_ref: int | None
    uncompressed_size: int | None
    entry_count: int | None
    skip_reason: str | None
    last_error: str | None

    @property
    def status(self) -> str:
        """indexed, pending, "skipped: <reason>" or "failed: <error>"."""
        if self.skip_reason:
            return f"skipped: {self.skip_reason}"
        if self.diff_ref is not None:
            return "indexed"
        return f"failed: {self.last_error}" if self.last_error else "pending"


def image_filter(connection: Connection, refs: Sequence[Reference]) -> Any:
    """A WHERE clause on ``images`` for the images a list of references names (None: all)."""
    if not refs:
        return None
    errors = connection.dialect.loaded_dbapi.Error
    reader = Reader(connection.connection, connection.dialect.name, errors)
    return images.c.id.in_(image_ids(reader, refs))


class Finder:
    """Queries. Read-only: nothing here writes to the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def find(self, pattern: PathPattern, filters: FindFilters | None = None) -> list[Row]:
        """``find.find`` on one of the engine's connections, as a list."""
        with Reader.from_engine(self.engine) as reader:
            return list(find.find(reader, pattern, filters or FindFilters()))

    def images(self) -> list[Row]:
        layer_count = (
            select(func.count())
            .where(image_layers.c.image_id == images.c.id)
            .correlate(images)
            .scalar_subquery()
        )
        entry_count = (
            select(func.coalesce(func.sum(diffs.c.entry_count), 0))
            .select_from(image_layers)
            .join(layers, layers.c.id == image_layers.c.layer_id)
            .join(diffs, diffs.c.id == layers.c.diff_ref)
            .where(image_layers.c.image_id == images.c.id)
            .correlate(images)
            .scalar_subquery()
        )
        query = select(
            images.c.reference.label("image"),
            images.c.digest.label("manifest_digest"),
            images.c.platform,
            layer_count.label("layers"),
            entry_count.label("entries"),
            images.c.indexed_at,
        ).order_by(images.c.reference, images.c.platform)
        with self.engine.connect() as connection:
            return [
                {**row._asdict(), "indexed_at": _iso(row.indexed_at)}
                for row in connection.execute(query)
            ]

    def image(self, ref: Reference, platform: str | None = None) -> IndexedImage:
        """The one indexed image ``ref`` names (``platform`` picks one of an index's)."""
        with self.engine.connect() as connection:
            query = select(images, repositories.c.registry, repositories.c.name).join(
                repositories, repositories.c.id == images.c.repository_id
            )
            found = connection.execute(
                query.where(image_filter(connection, [ref])).order_by(images.c.platform)
            ).all()
        if not found:
            raise NotFound(f"{ref.familiar()} is not indexed; run: layerindex index {ref}")
        chosen = pick_platforms(platform, found, lambda r: str(r.platform))
        if not chosen:
            available = ", ".join(r.platform for r in found)
            raise NotFound(
                f"{ref.familiar()} has no indexed {platform} image; indexed: {available}"
            )
        found = chosen
        if len(found) > 1:
            available = ", ".join(r.platform for r in found)
            raise UsageError(
                f"{ref.familiar()} names {len(found)} indexed images ({available}); "
                "pick one with --platform"
            )
        r = found[0]
        return IndexedImage(
            id=r.id,
            reference=r.reference,
            registry=r.registry,
            repository=r.name,
            digest=r.digest,
            index_digest=r.index_digest,
            media_type=r.media_type,
            platform=r.platform,
            manifest=r.manifest,
            config=r.config,
        )

    def image_layers(self, image: IndexedImage) -> list[ImageLayer]:
        """An image's layers, base first, with what the index knows of each."""
        query = (
            select(
                image_layers.c.position,
                layers.c.digest,
                layers.c.diff_id,
                layers.c.media_type,
                layers.c.size,
                layers.c.diff_ref,
                diffs.c.size.label("uncompressed_size"),
                diffs.c.entry_count,
                layers.c.skip_reason,
                layers.c.last_error,
            )
            .select_from(image_layers)
            .join(layers, layers.c.id == image_layers.c.layer_id)
            .outerjoin(diffs, diffs.c.id == layers.c.diff_ref)
            .where(image_layers.c.image_id == image.id)
            .order_by(image_layers.c.position)
        )
        with self.engine.connect() as connection:
            return [ImageLayer(**row._asdict()) for row in connection.execute(query)]

    def layer_entries(
        self, diff_refs: Sequence[int | None], prefix: str = "/"
    ) -> list[list[tuple[str, EntryType, Row]]]:
        """Each layer's own rows as (path, type, details); a layer not indexed gives none."""
        with self.engine.connect() as connection:
            return entries_of(connection, diff_refs, prefix)

    def ls_layer(self, digest: str, prefix: str = "/") -> Iterator[Row]:
        """A layer's own entries (whiteouts and opaque markers included), sorted by path."""
        with self.engine.connect() as connection:
            diff_ref = connection.execute(
                select(layers.c.diff_ref).where(layers.c.digest == digest)
            ).first()
            if diff_ref is None or diff_ref[0] is None:
                raise NotFound(f"layer {digest} is not indexed")
            rows = entries_of(connection, [diff_ref[0]], prefix)
        for path, entry_type, payload in sorted(rows[0], key=lambda r: r[0]):
            yield {"path": path, "type": entry_type.value, **payload}

    def ls_image(
        self, image: IndexedImage, prefix: str = "/", layer: str | None = None
    ) -> Iterator[Row]:
        """The image's final filesystem (whiteouts applied, top layer wins), or with ``layer``
        (a position, or a digest or its prefix) that one layer's own entries."""
        stack = self.image_layers(image)
        if layer is not None:
            chosen = _pick_layer(image, stack, layer)
            if chosen.diff_ref is None:
                raise NotFound(f"layer {chosen.position} ({chosen.digest}) is not indexed")
            (own,) = self.layer_entries([chosen.diff_ref], prefix)
            for path, entry_type, payload in sorted(own, key=lambda r: r[0]):
                yield {
                    **_image_columns(image, chosen.position),
                    "path": path,
                    "type": entry_type.value,
                    **payload,
                }
            return
        with self.engine.connect() as connection:
            # A hard link is what a container sees there: its target's type and size.
            linked = {
                (link.position, link.path): (kind, link.target_size)
                for link in hard_links(connection, image, prefix)
                if (kind := link.target_type) is not None
            }
            view = overlay.final_entries(image_paths(connection, image, prefix))
            for path, position, entry_type, entry in view:
                if not _has_prefix(path, prefix):
                    continue  # an ancestor of the prefix, read for what it deletes
                row = {
                    **_image_columns(image, position),
                    "path": path,
                    "type": entry_type.value,
                    **details(entry),
                }
                if (position, path) in linked:
                    kind, size = linked[(position, path)]
                    row |= {"type": kind.value, "size": size}
                yield row


def _image_columns(image: IndexedImage, position: int) -> Row:
    return {"image": image.reference, "platform": image.platform, "layer_index": position}


def _pick_layer(image: IndexedImage, stack: Sequence[ImageLayer], wanted: str) -> ImageLayer:
    """A layer of ``image`` by position (0 = base) or by digest, whole or a unique prefix."""
    if wanted.isdigit():
        position = int(wanted)
        if position >= len(stack):
            raise UsageError(
                f"{image.reference} has {len(stack)} layers (0 to {len(stack) - 1}); "
                f"there is no layer {position}"
            )
        return stack[position]
    matches = [lr for lr in stack if lr.digest.startswith(wanted)]
    if len(matches) != 1:
        problem = "no layer" if not matches else f"{len(matches)} layers"
        raise UsageError(f"{image.reference} has {problem} with digest {wanted}")
    return matches[0]


DETAILS = ("size", "mode", "uid", "gid", "link_target", "sha256")
EntryRow = Sequence[Any]  # a row of entry columns ending in DETAILS


def layer_entries(diff_refs: Iterable[int | None]) -> Any:
    """A SELECT of the entries of these layer contents, with their dir and name text;
    callers add their own filters."""
    return (
        select(
            entries.c.diff_ref,
            dirs.c.path.label("dir"),
            names.c.name,
            entries.c.type,
            *(entries.c[name] for name in DETAILS),
        )
        .join(dirs, dirs.c.id == entries.c.dir_id)
        .join(names, names.c.id == entries.c.name_id)
        .where(entries.c.diff_ref.in_(sorted({d for d in diff_refs if d is not None})))
    )


def entries_of(
    connection: Connection, diff_refs: Sequence[int | None], prefix: str
) -> list[list[tuple[str, EntryType, Row]]]:
    """Each layer's rows as (path, type, details); a layer not indexed gives no rows."""
    query = _under(layer_entries(diff_refs), prefix)
    by_diff: dict[int, list[tuple[str, EntryType, Row]]] = defaultdict(list)
    for r in connection.execute(query):
        path = stored_path(r.dir, r.name)
        if _has_prefix(path, prefix):
            by_diff[r.diff_ref].append((path, TYPE_NAMES[r.type], details(r)))
    return [by_diff.get(d, []) if d is not None else [] for d in diff_refs]


def image_paths(
    connection: Connection, image: IndexedImage, prefix: str = "/"
) -> Iterator[tuple[str, overlay.Held[EntryRow]]]:
    """Each path of the image's indexed layers with its entries there, as (position, type,
    row), base first; the paths in order (``overlay.by_path``), streamed from the database
    (sorted there: a big image's entries are never all in memory at once). ``details(row)``
    makes a row's columns, for the few rows shown. Under a ``prefix``, its proper ancestors
    come too: a whiteout of ``/usr`` deletes ``/usr/lib``."""
    path: ColumnElement[str] = case(
        (names.c.name == OPAQUE_MARKER, dirs.c.path),
        else_=func.rtrim(dirs.c.path, "/") + "/" + names.c.name,
    )
    if connection.dialect.name == "postgresql":
        path = path.collate("C")  # the order of Python's strings (code points), not the locale's
    query = _under(
        select(
            path.label("path"),
            image_layers.c.position,
            entries.c.type,
            *(entries.c[name] for name in DETAILS),
        )
        .select_from(image_layers)
        .join(layers, layers.c.id == image_layers.c.layer_id)
        .join(entries, entries.c.diff_ref == layers.c.diff_ref)
        .join(dirs, dirs.c.id == entries.c.dir_id)
        .join(names, names.c.id == entries.c.name_id)
        .where(image_layers.c.image_id == image.id)
        .order_by(path, image_layers.c.position),
        prefix,
    )
    rows = connection.execution_options(stream_results=True).execute(query)
    above = set(overlay.ancestors(prefix))
    for found, group in itertools.groupby(rows, key=operator.itemgetter(0)):
        if _has_prefix(found, prefix) or found in above:
            yield found, [(r[1], TYPE_NAMES[r[2]], r) for r in group]


@dataclass(frozen=True)
class HardLink:
    """A hard link of an image's layer and the entry it names in that layer (the bytes a
    container sees at the link), if the layer has it."""

    position: int
    path: str
    target: str
    target_type: EntryType | None
    target_size: int | None


def hard_links(connection: Connection, image: IndexedImage, prefix: str = "/") -> list[HardLink]:
    """The image's hard links under ``prefix``, each with its target in its own layer (where
    tar writes the first name of a file's data, the later ones as links to it). Few in any
    image: held."""
    positions: dict[int, list[int]] = defaultdict(list)  # a layer may come twice
    for r in connection.execute(
        select(image_layers.c.position, layers.c.diff_ref)
        .join(layers, layers.c.id == image_layers.c.layer_id)
        .where(image_layers.c.image_id == image.id, layers.c.diff_ref.is_not(None))
    ):
        positions[r.diff_ref].append(r.position)
    found = [
        (r.diff_ref, stored_path(r.dir, r.name), r.link_target or "")
        for r in connection.execute(
            _under(layer_entries(positions), prefix).where(
                entries.c.type == TYPE_CODES[EntryType.HARDLINK]
            )
        )
        if _has_prefix(stored_path(r.dir, r.name), prefix)
    ]
    targets: dict[tuple[int, str], tuple[EntryType, int]] = {}
    pairs = sorted({split_path(target) for _, _, target in found})
    for start in range(0, len(pairs), 500):  # bound the statement's parameters
        query = layer_entries({d for d, _, _ in found}).where(
            tuple_(dirs.c.path, names.c.name).in_(pairs[start : start + 500])
        )
        for r in connection.execute(query):
            targets[(r.diff_ref, stored_path(r.dir, r.name))] = (TYPE_NAMES[r.type], r.size)
    links: list[HardLink] = []
    for diff_ref, path, target in found:
        kind, size = targets.get((diff_ref, target), (None, None))
        links.extend(HardLink(p, path, target, kind, size) for p in positions[diff_ref])
    return sorted(links, key=lambda link: (link.position, link.path))


def _under(query: Any, prefix: str) -> Any:
    """``query`` narrowed to the dirs that may hold paths under ``prefix`` or its ancestors
    (the prefix sits in its parent, an ancestor in its own parent; a directory's opaque
    marker sits in it): a few directories' own entries more than the prefix's."""
    if prefix == "/":
        return query
    return query.where(
        or_(
            dirs.c.path == prefix,
            dirs.c.path.in_(list(overlay.ancestors(prefix))),
            dirs.c.path.startswith(prefix + "/", autoescape=True),
        )
    )


def details(row: EntryRow) -> Row:
    """The DETAILS columns of an entry's row."""
    return dict(zip(DETAILS, row[-len(DETAILS) :], strict=True))


def size_of(row: EntryRow) -> int:
    """The size column of an entry's row (the first of DETAILS)."""
    return int(row[-len(DETAILS)])


def _has_prefix(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
