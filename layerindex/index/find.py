"""``find``: the entries a path pattern matches in the indexed images, each with its fate in its
image, streamed in find's order (image, platform, path, layer) and stopped at ``--limit``.

Plain SQL over a ``database.Reader``: on SQLite the ``find`` command never imports SQLAlchemy.
Images are read in growing batches (one image, then as many as the rows still wanted need at
the rate so far; without a limit, doubling up to MAX_BATCH), so a query stops after the first
images that fill its limit and memory stays bounded without one; within a batch, what later
layers did to each match is looked up only for the matches about to be written.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from layerindex.index.database import Reader, among
from layerindex.index.patterns import ID_CHUNK, Branch, Candidates, PathPattern, chunks
from layerindex.index.resolve import image_ids
from layerindex.layer import overlay
from layerindex.layer.entries import (
    OPAQUE_MARKER,
    TYPE_CODES,
    TYPE_NAMES,
    EntryType,
    split_path,
    stored_path,
)
from layerindex.registry.platforms import names_platform

if TYPE_CHECKING:
    from layerindex.reference import Reference

Row = dict[str, Any]

# Whiteouts and opaque markers are deletions, never what a search finds.
DELETIONS = frozenset({EntryType.WHITEOUT, EntryType.OPAQUE})
FIRST_BATCH = 1  # images in the first batch
MAX_BATCH = 16  # images in a batch without a limit: their matches are held at once


@dataclass(frozen=True)
class FindFilters:
    """What ``find`` narrows its answer to, besides the path pattern."""

    image_refs: Sequence[Reference] = ()
    repos: Sequence[str] = ()  # "team/app" or "registry.example/team/app"
    platform: str | None = None  # "linux/arm64" also matches "linux/arm64/v8"
    types: Sequence[EntryType] = ()
    min_size: int | None = None
    max_size: int | None = None
    all_layers: bool = False
    limit: int | None = None


@dataclass(frozen=True)
class _Image:
    id: int
    reference: str
    digest: str
    platform: str


class _Match(NamedTuple):
    """One entry at a matching path, at one position of one image."""

    image: _Image
    position: int
    layer_digest: str
    path: str
    type: EntryType
    size: int
    mode: int
    link_target: str | None
    sha256: str | None


def find(reader: Reader, pattern: PathPattern, filters: FindFilters) -> Iterator[Row]:
    """Entries matching ``pattern``, by default those each image's final filesystem shows
    (state ``present``); ``filters.all_layers`` adds those later layers overwrote or deleted.

    The pattern's candidates and the filters' images are looked up now, so an unknown --image
    fails before anything is written; the rows come as they are read."""
    branches = Candidates(reader, many_dirs_later=filters.limit is not None).branches(pattern)
    return _rows(reader, branches, _images(reader, filters), pattern, filters)


def _rows(
    reader: Reader,
    branches: list[Branch],
    images: list[_Image],
    pattern: PathPattern,
    filters: FindFilters,
) -> Iterator[Row]:
    ids = _Interned(reader)
    limit = filters.limit
    written = done = 0
    # An exact path has at most one entry per layer: all images at once cost little.
    size = FIRST_BATCH if pattern.kind != "exact" else len(images)
    while done < len(images) and (limit is None or written < limit):
        end = min(len(images), done + size)
        # Images sharing a reference and platform (re-indexed under a moved tag) stay in
        # one batch, so their rows sort together.
        while end < len(images) and _order(images[end]) == _order(images[end - 1]):
            end += 1
        rows = _found_in(reader, images[done:end], branches, pattern, filters, ids)
        for row in rows:
            yield row
            written += 1
            if written == limit:
                return
        done = end
        if limit is None:
            size = min(2 * size, MAX_BATCH)
        else:
            # The next batch: as many images as the rows still wanted take at the rate so far.
            rate_says = len(images) if written == 0 else (limit - written) * done // written
            size = max(2 * size, rate_says)


def _found_in(
    reader: Reader,
    batch: list[_Image],
    branches: list[Branch],
    pattern: PathPattern,
    filters: FindFilters,
    ids: _Interned,
) -> Iterator[Row]:
    """The rows of one batch of images, in find's order."""
    layers = _layers(reader, batch)
    for run in _runs(reader, layers, branches, pattern, ids, limited=filters.limit is not None):
        # Every entry at a matching path is a match, whiteouts included (same dir and name):
        # they are the later layers' say over each path itself. Only --digest matches by
        # content, so its paths' other entries are looked up with the ancestors.
        at_path: dict[tuple[int, str], list[tuple[int, str, EntryType]]] = defaultdict(list)
        for m in run:
            at_path[(m.image.id, m.path)].append((m.position, m.path, m.type))
        wanted = [m for m in run if m.type not in DELETIONS and _kept(m, filters)]
        if not filters.all_layers and pattern.kind != "digest":
            # Only a path's topmost entry in an image can be present: the one above overwrites
            # or deletes every other. The rest need no look at their ancestors.
            top = {
                key: max(position for position, _path, _type in held)
                for key, held in at_path.items()
            }
            wanted = [m for m in wanted if m.position == top[(m.image.id, m.path)]]
        # Look up ancestors for the next matches only, as far as a limit may reach.
        step = max(1, len(wanted)) if filters.limit is None else max(filters.limit, 64)
        for start in range(0, len(wanted), step):
            chunk = wanted[start : start + step]
            above = ids.stacks(chunk, layers, with_path=pattern.kind == "digest")
            positions: dict[tuple[int, str], list[int]] = defaultdict(list)
            for m in chunk:
                positions[(m.image.id, m.path)].append(m.position)
            # Per path, not per match: a path in every layer of an image is one sweep.
            fates = {
                (image_id, path): overlay.fates(
                    path, held, at_path[(image_id, path)] + above[image_id].get(path, [])
                )
                for (image_id, path), held in positions.items()
            }
            for m in chunk:
                fate = fates[(m.image.id, m.path)][m.position]
                if fate.state == "present" or filters.all_layers:
                    yield _row(m, fate)


FIRST_DIRS = 64  # directories in the first read of a streamed candidate branch; then doubling
DIRS_SCANNED = 1024  # a read of this many directories or more takes all those left
FIRST_KEYS = 64  # entries in the first read of a streamed name branch; then doubling
STREAM_KEYS_MIN = 2000  # name branches with more entries than this in a batch are streamed
PAIR_SEEKS_MAX = 64  # (dir, name) pairs of a branch looked up by primary key in each layer


def _runs(
    reader: Reader,
    layers: Layers,
    branches: list[Branch],
    pattern: PathPattern,
    ids: _Interned,
    limited: bool,
) -> Iterator[list[_Match]]:
    """The batch's matches as consecutive sorted runs, each holding every entry of its paths.

    A branch of directories alone (``--contains``, a glob's directory) or of names alone
    (``--name``, ``--contains``) can name most of an image. Per image, such branches are read
    in the order of their paths, a few at a time (``_DirStream``, ``_HoldingDirStream`` when
    the dirs were too many to list, ``_NameStream``); once each stream has been read up to some
    path, the matches before it are complete. Names are
    streamed only under a limit (without one every row is read anyway) and when the batch holds
    more than STREAM_KEYS_MIN of their entries: the keys of those come first, from the name
    index alone; fewer are read at once, in one statement.
    """
    by_dirs = [
        b
        for b in branches
        if b.dirs_holding or (b.dirs is not None and b.names is None) or (limited and b == Branch())
    ]
    by_names = [b for b in branches if b.dirs is None and b.names is not None]
    names = {i: t for b in by_names for i, t in (b.names or {}).items()}
    many = limited and _many(reader, layers, names)
    keys = _name_keys(reader, sorted(layers), names) if many else []
    streamed = [*by_dirs, *by_names] if keys else by_dirs
    others = [b for b in branches if all(b is not s for s in streamed)]
    if not streamed:
        yield _matches(reader, layers, branches, pattern, ids)
        return
    dirs = sorted({i: t for b in by_dirs for i, t in (b.dirs or {}).items()}.items(), key=_dir_key)
    # Every dir holding a substring, or every dir at all ("": a pattern naming no dir or name).
    holding = [b.dirs_holding or "" for b in by_dirs if b.dirs is None]
    groups: dict[tuple[str, str], Layers] = defaultdict(lambda: defaultdict(list))
    for diff_ref, held in layers.items():
        for holder in held:
            groups[_order(holder[0])][diff_ref].append(holder)
    for _key, group in sorted(groups.items()):
        pending = _matches(reader, group, others, pattern, ids)
        streams: list[_DirStream | _HoldingDirStream | _NameStream] = [
            *([_DirStream(dirs)] if dirs else []),
            *(_HoldingDirStream(substring) for substring in holding),
        ]
        if group_keys := [k for k in keys if k[0] in group]:
            streams.append(_NameStream(group_keys, names, pattern, ids))
        while True:
            open_streams = [s for s in streams if s.bound is not None]
            if open_streams:
                nearest = min(open_streams, key=lambda s: s.bound or "")
                pending = _merged(pending, nearest.read(reader, group, pattern, ids))
            bound = min((s.bound for s in streams if s.bound is not None), default=None)
            if bound is None:
                yield pending
                break
            complete = bisect.bisect_left([m.path for m in pending], bound)
            yield pending[:complete]
            pending = pending[complete:]


class _DirStream:
    """A branch of directories alone, read in the order of their paths: every path in dir D
    sorts at or after ``D + "/"``."""

    def __init__(self, dirs: list[tuple[int, str]]) -> None:
        self.dirs = dirs
        self.start, self.size = 0, FIRST_DIRS

    @property
    def bound(self) -> str | None:
        """Where the matches not read yet start; None once all are read."""
        return _dir_key(self.dirs[self.start]) if self.start < len(self.dirs) else None

    def read(
        self, reader: Reader, group: Layers, pattern: PathPattern, ids: _Interned
    ) -> list[_Match]:
        # From ~1,000 dirs on SQLite reads the layers whole instead of seeking each dir: then
        # the rest are read at once, a few scans instead of one per doubling.
        end = self.start + self.size if self.size < DIRS_SCANNED else len(self.dirs)
        chunk = dict(self.dirs[self.start : end])
        self.start, self.size = end, self.size * 2
        return _matches(reader, group, [Branch(dirs=chunk)], pattern, ids)


class _HoldingDirStream:
    """Every directory whose path holds a substring (``Branch.dirs_holding``: too many to list;
    "": every directory), read from the index of dir paths in its order: every path in dir D
    sorts after D itself, so the first dir not read yet bounds the matches still to come.
    (SQLite's index order is that of Python's strings; PostgreSQL's is its collation's, so
    there the dirs are sorted as "C", code points.)"""

    def __init__(self, substring: str) -> None:
        self.substring = substring
        self.bound: str | None = ""  # where the dirs not read yet start; None once all are read
        self.size = FIRST_DIRS

    def read(
        self, reader: Reader, group: Layers, pattern: PathPattern, ids: _Interned
    ) -> list[_Match]:
        # As _DirStream: from DIRS_SCANNED dirs on, all the rest at once; but every dir is read
        # DIRS_SCANNED at a time (the rest would be the whole image, held at once). One more
        # row than the chunk says where the next read starts.
        rest = self.size >= DIRS_SCANNED and self.substring != ""
        size = min(self.size, DIRS_SCANNED)
        path = "path" if reader.dialect == "sqlite" else 'path COLLATE "C"'
        holds = "instr(path, ?)" if reader.dialect == "sqlite" else "strpos(path, ?)"
        rows = reader.rows(
            f"SELECT id, path FROM dirs WHERE {path} >= ?"
            + (f" AND {holds} > 0" if self.substring else "")
            + f" ORDER BY {path}"
            + ("" if rest else " LIMIT ?"),
            [
                self.bound,
                *([self.substring] if self.substring else []),
                *([] if rest else [size + 1]),
            ],
        )
        chunk = dict(rows if rest else rows[:size])
        self.bound = None if rest or len(rows) <= size else rows[size][1]
        self.size *= 2
        return _matches(reader, group, [Branch(dirs=chunk)], pattern, ids)


class _NameStream:
    """A branch of names alone in one image: the keys of its entries sorted by their paths,
    whose rows are read a few paths at a time."""

    def __init__(
        self,
        keys: list[tuple[int, int, int]],
        names: dict[int, str],
        pattern: PathPattern,
        ids: _Interned,
    ) -> None:
        dirs = ids.texts("dirs", {dir_id for _, dir_id, _ in keys})
        paths = [(stored_path(dirs[key[1]], names[key[2]]), key) for key in keys]
        self.keys = sorted((path, key) for path, key in paths if pattern.matches(path))
        self.names = names
        self.start, self.size = 0, FIRST_KEYS

    @property
    def bound(self) -> str | None:
        """The first path not read yet; None once all are read."""
        return self.keys[self.start][0] if self.start < len(self.keys) else None

    def read(
        self, reader: Reader, group: Layers, pattern: PathPattern, ids: _Interned
    ) -> list[_Match]:
        end = min(len(self.keys), self.start + self.size)
        chunk = [key for _path, key in self.keys[self.start : end]]
        self.start, self.size = end, self.size * 2
        return _keyed_matches(reader, group, chunk, self.names, pattern, ids)


def _merged(found: list[_Match], read: list[_Match]) -> list[_Match]:
    """Both lists' matches (one per image, layer and path) in find's order."""
    if not read:
        return found
    unique = {(m.image.id, m.position, m.path): m for m in [*found, *read]}
    return sorted(unique.values(), key=_match_order)


def _dir_key(item: tuple[int, str]) -> str:
    """Where a directory's entries start in path order."""
    return item[1].rstrip("/") + "/"


def _kept(m: _Match, filters: FindFilters) -> bool:
    if filters.types and m.type not in filters.types:
        return False
    if filters.min_size is not None and m.size < filters.min_size:
        return False
    return filters.max_size is None or m.size <= filters.max_size


def _row(m: _Match, fate: overlay.Fate) -> Row:
    return {
        "image": m.image.reference,
        "manifest_digest": m.image.digest,
        "platform": m.image.platform,
        "layer_index": m.position,
        "layer_digest": m.layer_digest,
        "path": m.path,
        "size": m.size,
        "type": m.type.value,
        "mode": m.mode,
        "link_target": m.link_target,
        "sha256": m.sha256,
        "state": fate.state,
        "changed_by_layer": fate.by_position,
    }


def _images(reader: Reader, filters: FindFilters) -> list[_Image]:
    """The images the filters allow, in find's order (sorted here: PostgreSQL's collation is
    not Python's)."""
    chosen = set(image_ids(reader, filters.image_refs)) if filters.image_refs else None
    rows = reader.rows(
        "SELECT i.id, i.reference, i.digest, i.platform, r.registry, r.name "
        "FROM images i JOIN repositories r ON r.id = i.repository_id"
    )
    found = []
    for image_id, reference, digest, platform, registry, repository in rows:
        if chosen is not None and image_id not in chosen:
            continue
        if filters.repos and not {repository, f"{registry}/{repository}"} & set(filters.repos):
            continue
        wanted = filters.platform
        if wanted and not names_platform(wanted, platform):
            continue
        found.append(_Image(image_id, reference, digest, platform))
    return sorted(found, key=lambda i: (i.reference, i.platform, i.id))


def _order(image: _Image) -> tuple[str, str]:
    return image.reference, image.platform


# Ids only: the texts come from the candidates or the interned-text cache, two B-tree
# lookups a row fewer.
ENTRY_COLUMNS = "e.diff_ref, e.dir_id, e.name_id, e.type, e.size, e.mode, e.link_target, e.sha256"


Layers = dict[int, list[tuple[_Image, int, str]]]  # diff_ref → (image, position, layer digest)


def _layers(reader: Reader, batch: list[_Image]) -> Layers:
    """The indexed layers of the batch's images, by layer content."""
    images = {image.id: image for image in batch}
    by_diff: Layers = defaultdict(list)
    for chunk in chunks(sorted(images)):
        in_images, params = among(reader.dialect, "il.image_id", chunk)
        rows = reader.rows(
            "SELECT il.image_id, il.position, l.digest, l.diff_ref FROM image_layers il "
            f"JOIN layers l ON l.id = il.layer_id WHERE l.diff_ref IS NOT NULL AND {in_images}",
            params,
        )
        for image_id, position, digest, diff_ref in rows:
            # The same layer may sit in many images, and twice in one.
            by_diff[diff_ref].append((images[image_id], position, digest))
    return by_diff


def _matches(
    reader: Reader, by_diff: Layers, branches: list[Branch], pattern: PathPattern, ids: _Interned
) -> list[_Match]:
    """The entries of these layers whose paths match, sorted in find's order."""
    if not by_diff:
        return []
    found: dict[tuple[int, int, str], _Match] = {}
    for branch in branches:
        rows = [
            row
            for sql, params in _branch_queries(branch, sorted(by_diff), reader.dialect)
            for row in reader.rows(sql, params)
        ]
        dirs = branch.dirs if branch.dirs is not None else ids.texts("dirs", {r[1] for r in rows})
        names = (
            branch.names if branch.names is not None else ids.texts("names", {r[2] for r in rows})
        )
        _add_matches(found, rows, dirs, names, by_diff, pattern)
    return sorted(found.values(), key=_match_order)


def _keyed_matches(
    reader: Reader,
    by_diff: Layers,
    keys: Sequence[tuple[int, int, int]],
    names: dict[int, str],
    pattern: PathPattern,
    ids: _Interned,
) -> list[_Match]:
    """``_matches`` of the entries at these keys (diff_ref, dir_id, name_id), all in these
    layers: one primary key seek each."""
    found: dict[tuple[int, int, str], _Match] = {}
    for chunk in chunks(keys):
        if reader.dialect == "sqlite":
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            wanted = f"WITH wanted(diff_ref, dir_id, name_id) AS (VALUES {values}) "
            params: list[object] = [i for key in chunk for i in key]
        else:  # arrays: see _found_by_name
            wanted = (
                "WITH wanted AS (SELECT * FROM unnest(?::integer[], ?::integer[], ?::integer[]) "
                "AS w(diff_ref, dir_id, name_id)) "
            )
            params = [list(column) for column in zip(*chunk, strict=True)]
        rows = reader.rows(
            f"{wanted}SELECT {ENTRY_COLUMNS} FROM wanted w JOIN entries e "
            "ON e.diff_ref = w.diff_ref AND e.dir_id = w.dir_id AND e.name_id = w.name_id",
            params,
        )
        dirs = ids.texts("dirs", {r[1] for r in rows})
        _add_matches(found, rows, dirs, names, by_diff, pattern)
    return sorted(found.values(), key=_match_order)


def _add_matches(
    found: dict[tuple[int, int, str], _Match],
    rows: list[tuple[Any, ...]],
    dirs: dict[int, str],
    names: dict[int, str],
    by_diff: Layers,
    pattern: PathPattern,
) -> None:
    """The entry rows (``ENTRY_COLUMNS``) whose paths match, as matches in each image holding
    their layer. Opaque markers are left out: one stands for its directory's path, and says
    nothing about it."""
    for diff_ref, dir_id, name_id, code, size, mode, link_target, sha256 in rows:
        entry_type = TYPE_NAMES[code]
        path = stored_path(dirs[dir_id], names[name_id])
        if entry_type is EntryType.OPAQUE or not pattern.matches(path):
            continue
        for image, position, digest in by_diff[diff_ref]:
            found[(image.id, position, path)] = _Match(
                image, position, digest, path, entry_type, size, mode, link_target, sha256
            )


def _match_order(m: _Match) -> tuple[str, str, str, int, int]:
    return m.image.reference, m.image.platform, m.path, m.position, m.image.id


def _branch_queries(
    branch: Branch, diff_refs: list[int], dialect: str
) -> Iterator[tuple[str, list[object]]]:
    """SELECTs of the entries, in these layer contents, that a candidate branch names."""
    dir_ids = None if branch.dirs is None else sorted(branch.dirs)
    name_ids = None if branch.names is None else sorted(branch.names)
    if dir_ids == [] or name_ids == []:
        return  # nothing interned can match
    for refs in chunks(diff_refs):
        in_layers, layer_params = among(dialect, "e.diff_ref", refs)
        if branch.sha256 is not None:
            sql = f"SELECT {ENTRY_COLUMNS} FROM entries e WHERE {in_layers} AND e.sha256 = ?"
            yield sql, [*layer_params, branch.sha256]
            continue
        if name_ids is None:
            # The primary key (diff_ref, dir_id, name_id): a range per layer (and dir).
            for dirs in [None] if dir_ids is None else chunks(dir_ids):
                sql = f"SELECT {ENTRY_COLUMNS} FROM entries e WHERE {in_layers}"
                if dirs is None:
                    yield sql, layer_params
                else:
                    in_dirs, dir_params = among(dialect, "e.dir_id", dirs)
                    yield f"{sql} AND {in_dirs}", [*layer_params, *dir_params]
            continue
        if dir_ids is not None and len(dir_ids) * len(name_ids) <= PAIR_SEEKS_MAX:
            # A few paths (an exact one, a name in a few dirs): which layers hold each, one
            # seek per path and layer in the name's range of ix_entries_name_layer (dense:
            # most land on pages the one before read), then the rows of those alone.
            pairs = [(d, n) for d in dir_ids for n in name_ids]
            terms, seeks, params = _at_pairs(dialect, pairs, refs)
            yield (
                f"WITH {terms}held AS MATERIALIZED (SELECT e.diff_ref, e.dir_id, e.name_id "
                f"FROM {seeks}) SELECT {ENTRY_COLUMNS} FROM held h JOIN entries e ON "
                "e.diff_ref = h.diff_ref AND e.dir_id = h.dir_id AND e.name_id = h.name_id",
                params,
            )
            continue
        for names in chunks(name_ids):
            for dirs in [None] if dir_ids is None else chunks(dir_ids):
                found, params = _found_by_name(dialect, names, refs, dirs)
                yield (
                    f"{found} SELECT {ENTRY_COLUMNS} FROM found f JOIN entries e ON e.diff_ref = "
                    "f.diff_ref AND e.dir_id = f.dir_id AND e.name_id = f.name_id",
                    params,
                )


def _at_pairs(
    dialect: str, pairs: Sequence[tuple[int, int]], refs: Sequence[int]
) -> tuple[str, str, list[object]]:
    """The entries ``e`` at these (dir, name) pairs in these layers: WITH terms to put first
    (ending in ", " when there are any), what to SELECT them FROM, and the parameters."""
    if dialect == "sqlite":
        flat: list[object] = [i for pair in pairs for i in pair]
        return f"{_pairs_in_layers(len(pairs), len(refs))}, ", _PAIR_SEEKS, [*flat, *refs]
    # Arrays (see _found_by_name), and a seek per pair and layer on all three columns: joined
    # plainly, PostgreSQL seeks a pair's name and dir and checks every layer's entries there
    # (40 ms instead of 1.6 for 171 pairs in 3 layers). OFFSET 0 keeps the subquery whole.
    dirs, names = zip(*pairs, strict=True)
    return (
        "",
        "unnest(?::integer[], ?::integer[]) AS w(dir_id, name_id) "
        "CROSS JOIN unnest(?::integer[]) AS l(diff_ref) CROSS JOIN LATERAL "
        "(SELECT e.diff_ref, e.dir_id, e.name_id, e.type FROM entries e WHERE "
        "e.name_id = w.name_id AND e.diff_ref = l.diff_ref AND e.dir_id = w.dir_id OFFSET 0) e",
        [list(dirs), list(names), list(refs)],
    )


def _pairs_in_layers(pairs: int, layers: int) -> str:
    """The WITH terms ``wanted(dir_id, name_id)`` and ``layer(diff_ref)``, bound in that order."""
    return (
        f"wanted(dir_id, name_id) AS (VALUES {', '.join(['(?, ?)'] * pairs)}), "
        f"layer(diff_ref) AS (VALUES {', '.join(['(?)'] * layers)})"
    )


# The entries at ``wanted`` pairs in ``layer``s: joined in this order, one seek per pair and
# layer, a pair's layers in the order ix_entries_name_layer keeps them. (With "diff_ref IN
# (...)" SQLite builds a Bloom filter over every entry of the layers first: 0.8 s, not 2 ms.)
# CROSS JOIN both: left to choose, SQLite may read the name's entries in every layer of the
# index and scan the layer list for each, quadratic in layers (a path in 20,000 layers:
# 3 s a statement of 5,000 layers instead of 7 ms).
_PAIR_SEEKS = (
    "wanted w CROSS JOIN layer l CROSS JOIN entries e "
    "ON e.name_id = w.name_id AND e.diff_ref = l.diff_ref AND e.dir_id = w.dir_id"
)


def _found_by_name(
    dialect: str,
    names: Sequence[int],
    refs: Sequence[int],
    dirs: Sequence[int] | None = None,
    materialized: bool = True,
) -> tuple[str, list[object]]:
    """A WITH clause making ``found``: the keys (diff_ref, dir_id, name_id) of the entries with
    these names in these layers (and these dirs), and its parameters. ix_entries_name_layer:
    one seek per (name, layer). Not materialised, a LIMIT on it stops the seeks.

    SQLite: VALUES lists joined in this order (CROSS JOIN: see _PAIR_SEEKS). (Asked for
    "name_id IN (...) AND diff_ref IN (...)", or for the columns at once, it reads whole layers
    through the primary key: 48 ms instead of 19 ms for 424 names in 5 layers, 10 s when
    joined.) PostgreSQL: arrays, which it
    probes in the index; a join of VALUES lists it plans as a scan of every entry (127 ms
    instead of 6 ms for 948 names in 5 layers of 2M entries)."""
    keep = "" if materialized else "NOT "
    in_dirs, dir_params = "", list[object]()
    if dirs:
        condition, dir_params = among(dialect, "e.dir_id", dirs)
        in_dirs = f" AND {condition}"
    if dialect != "sqlite":
        return (
            f"WITH found AS {keep}MATERIALIZED (SELECT e.diff_ref, e.dir_id, e.name_id "
            f"FROM entries e WHERE e.name_id = ANY(?) AND e.diff_ref = ANY(?){in_dirs})",
            [list(names), list(refs), *dir_params],
        )
    return (
        f"WITH wanted(name_id) AS (VALUES {', '.join(['(?)'] * len(names))}), "
        f"layer(diff_ref) AS (VALUES {', '.join(['(?)'] * len(refs))}), "
        f"found AS {keep}MATERIALIZED "
        "(SELECT e.diff_ref, e.dir_id, e.name_id FROM wanted w CROSS JOIN layer l CROSS JOIN "
        "entries e "
        f"ON e.name_id = w.name_id AND e.diff_ref = l.diff_ref{in_dirs})",
        [*names, *refs, *dir_params],
    )


def _many(reader: Reader, layers: Layers, names: dict[int, str]) -> bool:
    """Whether these layers hold more than STREAM_KEYS_MIN entries with these names (the name
    index, read no further than that)."""
    if not names:
        return False
    refs, name_ids = sorted(layers), sorted(names)
    if len(refs) > ID_CHUNK or len(name_ids) > ID_CHUNK:
        return True  # too many layers or names for one statement: stream them
    found, params = _found_by_name(reader.dialect, name_ids, refs, materialized=False)
    rows = reader.rows(
        f"{found} SELECT count(*) FROM (SELECT 1 FROM found LIMIT ?) f",
        [*params, STREAM_KEYS_MIN + 1],
    )
    return int(rows[0][0]) > STREAM_KEYS_MIN


def _name_keys(
    reader: Reader, diff_refs: list[int], names: dict[int, str]
) -> list[tuple[int, int, int]]:
    """The keys (diff_ref, dir_id, name_id) of the entries with these names in these layers:
    the name index alone answers."""
    keys: list[tuple[int, int, int]] = []
    for refs in chunks(diff_refs):
        for chunk in chunks(sorted(names)):
            found, params = _found_by_name(reader.dialect, chunk, refs)
            keys += reader.rows(f"{found} SELECT diff_ref, dir_id, name_id FROM found", params)
    return keys


class _Interned:
    """Ids of ancestor dirs and names (cached for the whole query), and the stacks of entries
    at found paths' ancestors: what ``overlay.fate`` needs besides the path's own entries."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.dir_ids: dict[str, int | None] = {}
        self.name_ids: dict[str, int | None] = {}
        self.dir_texts: dict[int, str] = {}
        self.name_texts: dict[int, str] = {}
        self.parents: dict[str, str] = {}  # path → its directory

    def stacks(
        self, matches: Sequence[_Match], layers: Layers, with_path: bool
    ) -> dict[int, dict[str, list[tuple[int, str, EntryType]]]]:
        """Per image, by found path: entries of the image's layers at the path's ancestors (as
        ``(position, upper path, type)``) but directories, which merge (``overlay.effect``),
        opaque markers at the directories they make opaque, and with ``with_path`` every entry
        at the path itself."""
        uppers_of = {
            path: [path] * with_path + self._ancestors(path) for path in {m.path for m in matches}
        }
        wanted: dict[tuple[str, str], str] = {}  # (dir, name) → the path it stands for
        for upper in {u for uppers in uppers_of.values() for u in uppers}:
            if upper != "/":  # the root is no entry
                wanted[split_path(upper)] = upper
            wanted[(upper, OPAQUE_MARKER)] = upper
        self._intern([d for d, _ in wanted], self.dir_ids, "dirs", "path")
        self._intern([n for _, n in wanted], self.name_ids, "names", "name")
        pairs: dict[tuple[int, int], str] = {}
        for (directory, name), upper in wanted.items():
            dir_id, name_id = self.dir_ids[directory], self.name_ids[name]
            if dir_id is not None and name_id is not None:
                pairs[(dir_id, name_id)] = upper
        lowest: dict[int, int] = {}  # image → its lowest matching layer
        for m in matches:
            lowest[m.image.id] = min(m.position, lowest.get(m.image.id, m.position))
        positions: dict[int, list[tuple[int, int]]] = defaultdict(list)  # diff_ref → (image, pos)
        for diff_ref, held in layers.items():
            for image, position, _digest in held:
                # Only layers above a match can change what it became.
                if position > lowest.get(image.id, position):
                    positions[diff_ref].append((image.id, position))
        by_upper: dict[int, dict[str, list[tuple[int, str, EntryType]]]] = defaultdict(dict)
        for diff_ref, dir_id, name_id, code in self._held(pairs, sorted(positions), with_path):
            upper = pairs[(dir_id, name_id)]
            for image_id, position in positions[diff_ref]:
                stack = by_upper[image_id].setdefault(upper, [])
                stack.append((position, upper, TYPE_NAMES[code]))
        found: dict[int, dict[str, list[tuple[int, str, EntryType]]]] = defaultdict(dict)
        for m in matches:
            per_path = found[m.image.id]
            if m.path not in per_path:
                image_stack = by_upper[m.image.id]
                per_path[m.path] = [e for u in uppers_of[m.path] for e in image_stack.get(u, [])]
        return found

    def _held(
        self, pairs: dict[tuple[int, int], str], refs: list[int], with_path: bool
    ) -> Iterator[tuple[int, int, int, int]]:
        """``(diff_ref, dir_id, name_id, type code)`` of the entries at these (dir, name) pairs
        in these layers, but directories unless ``with_path`` (see ``stacks``)."""
        # Most later layers re-declare a path's ancestors as directories: left in SQLite, they
        # spare Python most of the rows. Filtered outside the join: as a join term, the type
        # makes SQLite build a Bloom filter over every entry first (0.65 s instead of 4 ms).
        merging = "" if with_path else f" WHERE type <> {TYPE_CODES[EntryType.DIR]}"
        # SQLite: opaque markers apart (below); PostgreSQL: as pairs like the others.
        opaque = self.name_ids.get(OPAQUE_MARKER) if self.reader.dialect == "sqlite" else None
        seeks = sorted(pair for pair in pairs if pair[1] != opaque)
        opaque_dirs = sorted(dir_id for dir_id, name_id in pairs if name_id == opaque)
        for ref_chunk in chunks(refs):
            layer_values = ", ".join(["(?)"] * len(ref_chunk))
            for pair_chunk in chunks(seeks):
                # ix_entries_name_layer holds the type: the index alone answers.
                terms, at_pairs, params = _at_pairs(self.reader.dialect, pair_chunk, ref_chunk)
                yield from self.reader.rows(
                    f"WITH {terms}held AS MATERIALIZED (SELECT e.diff_ref, e.dir_id, e.name_id, "
                    f"e.type FROM {at_pairs}) "
                    f"SELECT diff_ref, dir_id, name_id, type FROM held{merging}",
                    params,
                )
            for dir_chunk in chunks(opaque_dirs):
                # Opaque markers through ix_entries_name_layer: all of them sit in one small
                # range of it, where seeks are ~8x cheaper than across the primary key.
                in_dirs, dir_params = among(self.reader.dialect, "e.dir_id", dir_chunk)
                yield from self.reader.rows(
                    f"WITH layer(diff_ref) AS (VALUES {layer_values}) "
                    "SELECT e.diff_ref, e.dir_id, e.name_id, e.type FROM layer l CROSS JOIN "
                    "entries e "
                    f"ON e.name_id = ? AND e.diff_ref = l.diff_ref AND {in_dirs}",
                    [*ref_chunk, opaque, *dir_params],
                )

    def _ancestors(self, path: str) -> list[str]:
        """``overlay.ancestors(path)``, from the cached parents of the dirs above it (a loop:
        a path may have thousands of components)."""
        chain = []
        while path != "/":
            parent = self.parents.get(path)
            if parent is None:
                parent = self.parents[path] = split_path(path)[0]
            chain.append(parent)
            path = parent
        return chain

    def texts(self, table: str, wanted: set[int]) -> dict[int, str]:
        """The texts of these dir or name ids (cached)."""
        cache = self.dir_texts if table == "dirs" else self.name_texts
        column = "path" if table == "dirs" else "name"
        for chunk in chunks(sorted(wanted - cache.keys())):
            in_ids, params = among(self.reader.dialect, "id", chunk)
            cache.update(
                self.reader.rows(f"SELECT id, {column} FROM {table} WHERE {in_ids}", params)
            )
        return cache

    def _intern(
        self, texts: list[str], cache: dict[str, int | None], table: str, column: str
    ) -> None:
        missing = sorted({t for t in texts if t not in cache})
        for chunk in chunks(missing):
            cache.update(dict.fromkeys(chunk))
            in_texts, params = among(self.reader.dialect, column, chunk)
            rows = self.reader.rows(f"SELECT {column}, id FROM {table} WHERE {in_texts}", params)
            cache.update(rows)
