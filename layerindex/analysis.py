"""Looking at one indexed image, from the index alone (no network): what ``inspect`` shows, each
layer's sizes and wasted bytes (dive's efficiency), and how two images' filesystems differ."""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from layerindex.errors import UsageError
from layerindex.index.history import current_tags
from layerindex.index.images import (
    EntryRow,
    Finder,
    Row,
    details,
    hard_links,
    image_paths,
    size_of,
)
from layerindex.index.resolve import IndexedImage
from layerindex.layer import overlay
from layerindex.layer.entries import EntryType
from layerindex.output import human_size, terminal_text
from layerindex.registry.manifest import (
    FetchedManifest,
    ImageConfig,
    ImageManifest,
    parse_config,
    parse_manifest,
)

# --- inspect -------------------------------------------------------------------------------------


def image_config(image: IndexedImage) -> ImageConfig:
    """The stored config, read with the stored manifest (as when the image was indexed)."""
    manifest = parse_manifest(
        FetchedManifest(
            image.manifest.encode("utf-8"), image.media_type, image.digest, image.reference
        )
    )
    assert isinstance(manifest, ImageManifest)  # only image manifests are stored
    return parse_config(image.config.encode("utf-8"), manifest)


def inspect(finder: Finder, image: IndexedImage) -> Row:
    """What ``skopeo inspect`` shows of an image, from the index."""
    config = image_config(image)
    return {
        "name": f"{image.registry}/{image.repository}",
        "reference": image.reference,
        "digest": image.digest,
        "index_digest": image.index_digest,
        "media_type": image.media_type,
        # Not skopeo's RepoTags (every tag of the repository): the tags that name this image.
        "tags_here": current_tags(finder.reader, image),
        "created": config.created,
        "architecture": config.architecture,
        "os": config.os,
        "variant": config.variant,
        "labels": dict(config.labels),
        "env": list(config.env),
        "entrypoint": list(config.entrypoint) if config.entrypoint is not None else None,
        "cmd": list(config.cmd) if config.cmd is not None else None,
        "layers": [
            {"digest": lr.digest, "media_type": lr.media_type, "size": lr.size}
            for lr in finder.image_layers(image)
        ],
        "history": [
            {"created": h.created, "created_by": h.created_by, "empty_layer": h.empty_layer}
            for h in config.history
        ],
    }


# --- efficiency ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InefficientFile:
    """A path whose bytes in some layer are hidden in the final filesystem (dive's
    "Inefficient Files")."""

    path: str
    copies: int  # layers that wrote something at the path (deletions are not copies)
    wasted_bytes: int  # bytes of its versions hidden in the final filesystem


@dataclass(frozen=True)
class Efficiency:
    efficiency: float  # dive's score: sum of each path's smallest version / sum of all versions
    wasted_bytes: int  # sum of wasted_by_layer
    wasted_by_layer: tuple[int, ...]  # bytes of each layer's files hidden in the final filesystem
    inefficient_files: tuple[InefficientFile, ...] = ()  # the most wasted first, at most ``top``


Layer = Iterable[tuple[str, EntryType, int]]  # (path, type, size) of each entry


def efficiency(
    layer_entries: Sequence[Layer], top: int = 0, hard_links: Iterable[tuple[int, str, str]] = ()
) -> Efficiency:
    """``path_efficiency`` of layers held in memory (base first)."""
    return path_efficiency(overlay.by_path(layer_entries), len(layer_entries), top, hard_links)


def path_efficiency(
    paths: Iterable[tuple[str, overlay.Held[int]]],
    layer_count: int,
    top: int = 0,
    hard_links: Iterable[tuple[int, str, str]] = (),
) -> Efficiency:
    """Wasted bytes and dive's efficiency over an image's paths, each with its entries as
    (position, type, size), in path order (``overlay.by_path``); the ``top`` paths that waste
    the most. ``hard_links`` are (position, link, target) of links to a file of their layer.

    A layer wastes the bytes of its files that the final filesystem hides: overwritten at the
    same path, whited out, under an opaque directory, under a deleted or replaced directory.
    A file a hard link of its layer names is hidden only when the links are too: while one is
    in the view, a container still holds its bytes.

    The score is dive's (dive/filetree/efficiency.go, ``Efficiency``): each path's versions
    are the sizes of what layers wrote there, and a deletion of what was there is a version
    of 0 bytes (dive counts a whited-out file as 0 B); the score is the sum of each path's
    smallest version over the sum of all versions, 1.0 without any bytes. Unlike dive, every
    deletion counts so at each path it deletes (dive counts a directory's whiteout as a
    version of all its bytes at the directory, which wastes nothing, and misses opaque
    directories), and a directory counts only where it replaces something (dive counts an
    empty directory as a 0-byte version, as if a file written there later were wasted).
    """
    wasted_by_layer = [0] * layer_count
    smallest_sum = total_sum = 0
    # The ``top`` most wasteful paths, as a heap whose first is the one to drop next: the least
    # wasted, and of equals the last in path order (the paths come in order: -count falls).
    most: list[tuple[int, int, InefficientFile]] = []

    def rank(count: int, path: str, copies: int, wasted: int) -> None:
        if top and wasted:
            entry = (wasted, -count, InefficientFile(path, copies, wasted))
            if len(most) < top:
                heapq.heappush(most, entry)
            else:
                heapq.heappushpop(most, entry)

    target_of = {(position, link): target for position, link, target in hard_links}
    linked = {(position, target) for (position, _), target in target_of.items()}
    linked_in_view: set[tuple[int, str]] = set()  # (position, target) of links the view shows
    # Paths whose hidden versions have links elsewhere: decided once every link has been read.
    undecided: list[tuple[int, str, int, int, list[tuple[int, int]]]] = []
    deletions = overlay.Deletions()
    for count, (path, held) in enumerate(paths):
        reaching = deletions.reaching(path, held)
        versions: list[int] = []
        hidden: list[tuple[int, int]] = []  # (position, bytes) of versions the view hides
        shown: tuple[int, int] | None = None  # (position, bytes) of the version in the view
        copies = 0
        for position, kind, size in held:
            if shown is not None:
                deleted_at = overlay.next_deletion(reaching, shown[0])
                if deleted_at is not None and deleted_at <= position:
                    hidden.append(shown)
                    versions.append(0)  # deleted: nothing left there
                    shown = None
            if kind in (EntryType.WHITEOUT, EntryType.OPAQUE):
                continue  # what they delete is counted at the paths deleted, above
            size = size if kind is EntryType.FILE else 0
            if shown is not None:
                hidden.append(shown)
                versions.append(size)
            elif kind is not EntryType.DIR:
                versions.append(size)
            if kind is not EntryType.DIR:
                copies += 1
            shown = (position, size)
        if shown is not None and overlay.next_deletion(reaching, shown[0]) is not None:
            hidden.append(shown)
            versions.append(0)
        elif shown is not None and (shown[0], path) in target_of:
            linked_in_view.add((shown[0], target_of[(shown[0], path)]))
        if versions:
            smallest_sum += min(versions)
            total_sum += sum(versions)
        wasted = 0
        held_back = []
        for position, size in hidden:
            if (position, path) in linked:
                held_back.append((position, size))
            else:
                wasted_by_layer[position] += size
                wasted += size
        if held_back:
            undecided.append((count, path, copies, wasted, held_back))
        else:
            rank(count, path, copies, wasted)
    for count, path, copies, wasted, held_back in undecided:
        for position, size in held_back:
            if (position, path) not in linked_in_view:
                wasted_by_layer[position] += size
                wasted += size
        rank(count, path, copies, wasted)
    return Efficiency(
        efficiency=smallest_sum / total_sum if total_sum else 1.0,
        wasted_bytes=sum(wasted_by_layer),
        wasted_by_layer=tuple(wasted_by_layer),
        inefficient_files=tuple(found for _, _, found in sorted(most, reverse=True)),
    )


@dataclass(frozen=True)
class LayerReport:
    image: IndexedImage
    layers: list[Row]
    files_bytes: int  # bytes of regular files the indexed layers hold (dive's "Total Image size")
    tar_bytes: int  # uncompressed tar bytes of the indexed layers
    compressed_bytes: int  # compressed bytes of all the layers, as the registry stores them
    wasted_bytes: int
    user_wasted_ratio: float | None  # wasted_bytes / files bytes above the base (dive's)
    efficiency: float
    inefficient_files: tuple[InefficientFile, ...]
    not_indexed: int  # layers left out of the sums (skipped, failed, pending)


def layer_report(finder: Finder, image: IndexedImage, top: int = 0) -> LayerReport:
    """Each layer with its sizes, history command, bytes added and wasted; the image's sizes,
    wasted bytes and efficiency over its indexed layers, and the ``top`` most wasteful paths."""
    stack = finder.image_layers(image)
    added = [0] * len(stack)  # bytes of regular files, by position

    def sizes(
        paths: Iterable[tuple[str, overlay.Held[EntryRow]]],
    ) -> Iterator[tuple[str, overlay.Held[int]]]:
        for path, held in paths:
            sized = [(position, kind, size_of(row)) for position, kind, row in held]
            for position, kind, size in sized:
                if kind is EntryType.FILE:
                    added[position] += size
            yield path, sized

    links = [
        (link.position, link.path, link.target)
        for link in hard_links(finder.reader, image)
        if link.target_type is not None
    ]
    result = path_efficiency(sizes(image_paths(finder.reader, image)), len(stack), top, links)
    commands = _layer_commands(image_config(image), len(stack))
    rows = []
    for lr, command in zip(stack, commands, strict=True):
        indexed = lr.diff_ref is not None
        rows.append(
            {
                "image": image.reference,
                "platform": image.platform,
                "layer_index": lr.position,
                "layer_digest": lr.digest,
                "media_type": lr.media_type,
                "size": lr.size,
                "uncompressed_size": lr.uncompressed_size,
                "entries": lr.entry_count,
                "added_bytes": added[lr.position] if indexed else None,
                "wasted_bytes": result.wasted_by_layer[lr.position] if indexed else None,
                "created_by": command,
                "status": lr.status,
            }
        )
    user_bytes = sum(added[1:])
    return LayerReport(
        image=image,
        layers=rows,
        files_bytes=sum(added),
        tar_bytes=sum(lr.uncompressed_size or 0 for lr in stack),
        compressed_bytes=sum(lr.size for lr in stack),
        wasted_bytes=result.wasted_bytes,
        # dive divides by zero here; with nothing added above the base, nothing there wastes.
        user_wasted_ratio=(
            result.wasted_bytes / user_bytes
            if user_bytes
            else (None if result.wasted_bytes else 0.0)
        ),
        efficiency=result.efficiency,
        inefficient_files=result.inefficient_files,
        not_indexed=sum(1 for lr in stack if lr.diff_ref is None),
    )


def summary_lines(report: LayerReport) -> list[str]:
    """What ``layers`` writes to stderr under its table, a line each (to escape as shown)."""
    ratio = report.user_wasted_ratio
    left_out = f"  ({report.not_indexed} layers not indexed)" if report.not_indexed else ""
    lines = [
        f"Image size: files {human_size(report.files_bytes)}, "
        f"tar {human_size(report.tar_bytes)}, compressed {human_size(report.compressed_bytes)}"
        f"{left_out}",
        f"Wasted: {human_size(report.wasted_bytes)}"
        + (f" ({100 * ratio:.0f} % of the bytes added above the base)" if ratio else "")
        + f"  Efficiency: {int(100 * report.efficiency)} %",
    ]
    if report.inefficient_files:
        lines.append("Inefficient files:")
        lines.append(f"  {'COPIES':>6}  {'WASTED':>9}  PATH")
        lines.extend(
            f"  {f.copies:>6}  {human_size(f.wasted_bytes):>9}  {f.path}"
            for f in report.inefficient_files
        )
    return lines


# --- the CI gate (dive --ci with .dive-ci) ------------------------------------------------------

BYTE_UNITS = {
    "": 1,
    "b": 1,
    **{f"{p}b": 1000**i for i, p in enumerate("kmgt", start=1)},
    **{f"{p}ib": 1024**i for i, p in enumerate("kmgt", start=1)},
}


@dataclass(frozen=True)
class GateRule:
    """One rule of ``--fail-on``: dive's ``rules`` of ``.dive-ci``, by the same names."""

    name: str  # lowest-efficiency, highest-wasted-bytes or highest-user-wasted-percent
    limit: float

    def failure(self, report: LayerReport) -> str | None:
        """Why ``report`` fails this rule, or None when it passes."""
        if self.name == "lowest-efficiency":
            if report.efficiency < self.limit:
                return f"efficiency {report.efficiency:.4f} < {self.limit:g}"
        elif self.name == "highest-wasted-bytes":
            if report.wasted_bytes > self.limit:
                return f"{report.wasted_bytes} bytes wasted > {int(self.limit)}"
        else:
            ratio = report.user_wasted_ratio
            if ratio is None:
                return f"{report.wasted_bytes} bytes wasted, none added above the base layer"
            if ratio > self.limit:
                return f"wasted / bytes added above the base {ratio:.4f} > {self.limit:g}"
        return None


def parse_gate(text: str) -> list[GateRule]:
    """``lowest-efficiency=0.9,highest-wasted-bytes=20MB,highest-user-wasted-percent=0.1``:
    fractions for the first and last (0.1 is 10 %), bytes with an optional unit (kB, MB, GB:
    powers of 1000; KiB, MiB, GiB: of 1024) for the wasted bytes."""
    rules = []
    for part in text.split(","):
        name, equals, value = (s.strip() for s in part.partition("="))
        try:
            if not equals:
                raise ValueError
            if name == "highest-wasted-bytes":
                number = value.rstrip("kKmMgGtTiIbB ")
                limit = float(number) * BYTE_UNITS[value[len(number) :].strip().lower()]
            elif name in ("lowest-efficiency", "highest-user-wasted-percent"):
                limit = float(value)
            else:
                raise UsageError(
                    f"--fail-on: no rule {name!r}; the rules are lowest-efficiency, "
                    "highest-wasted-bytes and highest-user-wasted-percent"
                )
        except (ValueError, KeyError):
            raise UsageError(
                f"--fail-on: {part.strip()!r} is not RULE=VALUE with a number "
                "(e.g. lowest-efficiency=0.9, highest-wasted-bytes=20MB)"
            ) from None
        rules.append(GateRule(name, limit))
    return rules


def _layer_commands(config: ImageConfig, count: int) -> list[str | None]:
    """The history ``created_by`` of each layer: history entries without ``empty_layer`` pair
    with the layers in order (ENV, CMD and the like made no layer)."""
    commands = [h.created_by for h in config.history if not h.empty_layer][:count]
    return commands + [None] * (count - len(commands))


# --- diff ----------------------------------------------------------------------------------------

DIFF_FIELDS = ("type", "size", "mode", "uid", "gid", "link_target", "sha256")


def diff(finder: Finder, old_image: IndexedImage, new_image: IndexedImage) -> Iterator[Row]:
    """Paths added, removed and changed from one image's final filesystem to another's, by path.

    Changed: type, size, mode, owner, link target, or content where both sides were hashed
    (indexed with --hash-files); a file's mtime alone is no change. Both final filesystems are
    read in path order side by side, never held whole."""
    old = overlay.final_entries(image_paths(finder.reader, old_image))
    new = overlay.final_entries(image_paths(finder.reader, new_image))
    for path, old_entry, new_entry in _side_by_side(old, new):
        before = _fields(*old_entry[2:]) if old_entry else None
        after = _fields(*new_entry[2:]) if new_entry else None
        if before is None:
            change, details = "added", _describe(after)
        elif after is None:
            change, details = "removed", _describe(before)
        else:
            details = _changes(before, after)
            if not details:
                continue
            change = "changed"
        row: Row = {"change": change, "path": path, "details": details}
        for name in DIFF_FIELDS:
            row[f"old_{name}"] = before[name] if before else None
            row[f"new_{name}"] = after[name] if after else None
        yield row


Shown = tuple[str, int, EntryType, EntryRow]  # a path of a final filesystem (overlay.final_entries)


def _side_by_side(
    old: Iterator[Shown], new: Iterator[Shown]
) -> Iterator[tuple[str, Shown | None, Shown | None]]:
    """Two final filesystems in path order, merged: each path with its entry on each side."""
    merged = heapq.merge(
        ((shown[0], 0, shown) for shown in old), ((shown[0], 1, shown) for shown in new)
    )
    for path, group in itertools.groupby(merged, key=lambda item: item[0]):
        sides = {side: shown for _path, side, shown in group}
        yield path, sides.get(0), sides.get(1)


def _fields(kind: EntryType, row: EntryRow) -> Row:
    return {"type": kind.value, **details(row)}


def _describe(entry: Row | None) -> str:
    assert entry is not None
    text = str(entry["type"])
    if entry["type"] == EntryType.FILE.value:
        text += f", {entry['size']} bytes"
    if entry["link_target"] is not None:
        text += f" -> {entry['link_target']}"
    return text


def _changes(before: Row, after: Row) -> str:
    parts = []
    for name in DIFF_FIELDS:
        old, new = before[name], after[name]
        if name == "sha256" and (old is None or new is None):
            continue  # not hashed on one side: unknown, not changed
        if name in ("uid", "gid") or old == new:
            continue
        if name == "mode":
            parts.append(f"mode {old:04o} -> {new:04o}")
        elif name == "sha256":
            parts.append("content")
        else:
            parts.append(f"{name.replace('_', ' ')} {_text(old)} -> {_text(new)}")
    if (before["uid"], before["gid"]) != (after["uid"], after["gid"]):
        parts.append(f"owner {before['uid']}:{before['gid']} -> {after['uid']}:{after['gid']}")
    return ", ".join(parts)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def inspect_text(data: Row) -> str:
    """The readable form of ``inspect``: one ``Key: value`` a line, lists indented below."""
    lines: list[str] = []

    def field(key: str, value: object) -> None:
        lines.append(f"{key + ':':<14}{value}".rstrip())

    field("Name", data["name"])
    field("Digest", data["digest"])
    if data["index_digest"]:
        field("Index digest", data["index_digest"])
    field("Tags here", ", ".join(data["tags_here"]) or "-")
    field("Created", data["created"] or "-")
    field("Architecture", data["architecture"])
    field("OS", data["os"])
    if data["variant"]:
        field("Variant", data["variant"])
    for key, values in (
        ("Labels", [f"{k}={v}" for k, v in sorted(data["labels"].items())]),
        ("Env", data["env"]),
    ):
        field(key, "" if values else "-")
        lines.extend(f"  {value}" for value in values)
    for key in ("entrypoint", "cmd"):
        value = data[key]
        field(key.capitalize(), json.dumps(value) if value is not None else "-")
    field("Layers", "")
    lines.extend(
        f"  {i}  {layer['digest']}  {layer['size']}  {layer['media_type']}"
        for i, layer in enumerate(data["layers"])
    )
    field("History", "" if data["history"] else "-")
    position = 0
    for entry in data["history"]:
        if entry["empty_layer"]:
            where = "-"
        else:
            where, position = str(position), position + 1
        lines.append(f"  {where:<3}{entry['created'] or '-'}  {entry['created_by'] or ''}".rstrip())
    return "\n".join(map(terminal_text, lines)) + "\n"  # a value's newline is shown, not obeyed
