"""Reading the index: list images, an image's layers, a layer's or image's files.

Plain SQL over a ``database.Reader`` (the stdlib's sqlite3 or psycopg): the commands that read
the index start without SQLAlchemy. Big answers (an image's every path) are streamed.
"""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from layerindex.errors import NotFound, UsageError
from layerindex.index import find
from layerindex.index.database import Reader, among, timestamp
from layerindex.index.find import FindFilters
from layerindex.index.patterns import PathPattern
from layerindex.index.resolve import IndexedImage, the_image
from layerindex.layer import overlay
from layerindex.layer.entries import (
    OPAQUE_MARKER,
    TYPE_CODES,
    TYPE_NAMES,
    EntryType,
    split_path,
    stored_path,
)

if TYPE_CHECKING:
    from layerindex.reference import Reference

Row = dict[str, Any]


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


@dataclass(frozen=True)
class ImageSummary:
    """An indexed image as ``images`` lists it."""

    image: str  # the reference it was indexed as
    manifest_digest: str
    platform: str
    layers: int
    entries: int  # of its indexed layers
    indexed_at: str | None  # ISO 8601; None until every layer is indexed or skipped


class Finder:
    """Queries on one open reader. Read-only: nothing here writes to the database."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def find(self, pattern: PathPattern, filters: FindFilters | None = None) -> list[Row]:
        """``find.find``, as a list."""
        return list(find.find(self.reader, pattern, filters or FindFilters()))

    def images(self) -> Iterator[ImageSummary]:
        rows = self.reader.stream(
            "SELECT i.reference, i.digest, i.platform, "
            "(SELECT count(*) FROM image_layers il WHERE il.image_id = i.id), "
            "(SELECT coalesce(sum(d.entry_count), 0) FROM image_layers il "
            "JOIN layers l ON l.id = il.layer_id JOIN diffs d ON d.id = l.diff_ref "
            "WHERE il.image_id = i.id), "
            "i.indexed_at FROM images i ORDER BY i.reference, i.platform"
        )
        for reference, digest, platform, layer_count, entry_count, indexed_at in rows:
            yield ImageSummary(
                reference,
                digest,
                platform,
                layer_count,
                int(entry_count),
                _iso(timestamp(indexed_at)),
            )

    def image(self, ref: Reference, platform: str | None = None) -> IndexedImage:
        """The one indexed image ``ref`` names (``platform`` picks one of an index's)."""
        return the_image(self.reader, ref, platform)

    def image_layers(self, image: IndexedImage) -> list[ImageLayer]:
        """An image's layers, base first, with what the index knows of each."""
        return [
            ImageLayer(*row)
            for row in self.reader.rows(
                "SELECT il.position, l.digest, l.diff_id, l.media_type, l.size, l.diff_ref, "
                "d.size, d.entry_count, l.skip_reason, l.last_error "
                "FROM image_layers il JOIN layers l ON l.id = il.layer_id "
                "LEFT OUTER JOIN diffs d ON d.id = l.diff_ref "
                "WHERE il.image_id = ? ORDER BY il.position",
                [image.id],
            )
        ]

    def layer_entries(
        self, diff_refs: Sequence[int | None], prefix: str = "/"
    ) -> list[list[tuple[str, EntryType, Row]]]:
        """Each layer's own rows as (path, type, details); a layer not indexed gives none."""
        return entries_of(self.reader, diff_refs, prefix)

    def ls_layer(self, digest: str, prefix: str = "/") -> Iterator[Row]:
        """A layer's own entries (whiteouts and opaque markers included), sorted by path."""
        diff_ref = self.reader.rows("SELECT diff_ref FROM layers WHERE digest = ?", [digest])
        if not diff_ref or diff_ref[0][0] is None:
            raise NotFound(f"layer {digest} is not indexed")
        rows = entries_of(self.reader, [diff_ref[0][0]], prefix)
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
        # A hard link is what a container sees there: its target's type and size.
        linked = {
            (link.position, link.path): (kind, link.target_size)
            for link in hard_links(self.reader, image, prefix)
            if (kind := link.target_type) is not None
        }
        view = overlay.final_entries(image_paths(self.reader, image, prefix))
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


ENTRY_DETAILS = ", ".join(f"e.{name}" for name in DETAILS)


def layer_entries_sql(dialect: str, diff_refs: Sequence[int | None]) -> tuple[str, list[object]]:
    """A SELECT of the entries of these layer contents (diff_ref, dir, name, type, DETAILS),
    and its parameters; callers add their own conditions with ``AND``."""
    wanted, params = among(dialect, "e.diff_ref", sorted({d for d in diff_refs if d is not None}))
    sql = (
        f"SELECT e.diff_ref, d.path, n.name, e.type, {ENTRY_DETAILS} FROM entries e "
        f"JOIN dirs d ON d.id = e.dir_id JOIN names n ON n.id = e.name_id WHERE {wanted}"
    )
    return sql, params


def entries_of(
    reader: Reader, diff_refs: Sequence[int | None], prefix: str
) -> list[list[tuple[str, EntryType, Row]]]:
    """Each layer's rows as (path, type, details); a layer not indexed gives no rows."""
    sql, params = layer_entries_sql(reader.dialect, diff_refs)
    under, under_params = _under(prefix)
    by_diff: dict[int, list[tuple[str, EntryType, Row]]] = defaultdict(list)
    for r in reader.stream(sql + under, params + under_params):
        path = stored_path(r[1], r[2])
        if _has_prefix(path, prefix):
            by_diff[r[0]].append((path, TYPE_NAMES[r[3]], details(r)))
    return [by_diff.get(d, []) if d is not None else [] for d in diff_refs]


def image_paths(
    reader: Reader, image: IndexedImage, prefix: str = "/"
) -> Iterator[tuple[str, overlay.Held[EntryRow]]]:
    """Each path of the image's indexed layers with its entries there, as (position, type,
    row), base first; the paths in order (``overlay.by_path``), streamed from the database
    (sorted there: a big image's entries are never all in memory at once). ``details(row)``
    makes a row's columns, for the few rows shown. Under a ``prefix``, its proper ancestors
    come too: a whiteout of ``/usr`` deletes ``/usr/lib``."""
    path = (
        f"CASE WHEN (n.name = '{OPAQUE_MARKER}') THEN d.path "
        "ELSE rtrim(d.path, '/') || '/' || n.name END"
    )
    if reader.dialect == "postgresql":
        path = f'({path}) COLLATE "C"'  # the order of Python's strings (code points)
    under, params = _under(prefix)
    rows = reader.stream(
        f"SELECT {path} AS path, il.position, e.type, {ENTRY_DETAILS} FROM image_layers il "
        "JOIN layers l ON l.id = il.layer_id JOIN entries e ON e.diff_ref = l.diff_ref "
        "JOIN dirs d ON d.id = e.dir_id JOIN names n ON n.id = e.name_id "
        f"WHERE il.image_id = ?{under} ORDER BY {path}, il.position",
        [image.id, *params],
    )
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


def hard_links(reader: Reader, image: IndexedImage, prefix: str = "/") -> list[HardLink]:
    """The image's hard links under ``prefix``, each with its target in its own layer (where
    tar writes the first name of a file's data, the later ones as links to it). Few in any
    image: held."""
    positions: dict[int, list[int]] = defaultdict(list)  # a layer may come twice
    for position, diff_ref in reader.rows(
        "SELECT il.position, l.diff_ref FROM image_layers il JOIN layers l ON l.id = il.layer_id "
        "WHERE il.image_id = ? AND l.diff_ref IS NOT NULL",
        [image.id],
    ):
        positions[diff_ref].append(position)
    if not positions:
        return []
    sql, params = layer_entries_sql(reader.dialect, list(positions))
    under, under_params = _under(prefix)
    found = [
        (r[0], stored_path(r[1], r[2]), details(r)["link_target"] or "")
        for r in reader.rows(
            f"{sql} AND e.type = ?{under}",
            [*params, TYPE_CODES[EntryType.HARDLINK], *under_params],
        )
        if _has_prefix(stored_path(r[1], r[2]), prefix)
    ]
    targets: dict[tuple[int, str], tuple[EntryType, int]] = {}
    pairs = sorted({split_path(target) for _, _, target in found})
    sql, params = layer_entries_sql(reader.dialect, [d for d, _, _ in found])
    for start in range(0, len(pairs), 500):  # bound the statement's parameters
        chunk = pairs[start : start + 500]
        wanted = " OR ".join(["(d.path = ? AND n.name = ?)"] * len(chunk))
        for r in reader.rows(f"{sql} AND ({wanted})", [*params, *itertools.chain(*chunk)]):
            targets[(r[0], stored_path(r[1], r[2]))] = (TYPE_NAMES[r[3]], details(r)["size"])
    links: list[HardLink] = []
    for diff_ref, path, target in found:
        kind, size = targets.get((diff_ref, target), (None, None))
        links.extend(HardLink(p, path, target, kind, size) for p in positions[diff_ref])
    return sorted(links, key=lambda link: (link.position, link.path))


def _under(prefix: str) -> tuple[str, list[object]]:
    """`` AND`` a condition narrowing a query to the dirs (``d``) that may hold paths under
    ``prefix`` or its ancestors (the prefix sits in its parent, an ancestor in its own parent;
    a directory's opaque marker sits in it): a few directories' own entries more than the
    prefix's; and its parameters; nothing for "/"."""
    if prefix == "/":
        return "", []
    above = list(overlay.ancestors(prefix))
    escaped = "".join("/" + c if c in "/%_" else c for c in prefix + "/")
    within = ", ".join("?" * len(above))
    return (
        f" AND (d.path = ? OR d.path IN ({within}) OR d.path LIKE ? ESCAPE '/')",
        [prefix, *above, escaped + "%"],
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
