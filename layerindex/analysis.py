"""Looking at one indexed image, from the index alone (no network): what ``inspect`` shows, each
layer's sizes and wasted bytes (dive's efficiency), and how two images' filesystems differ."""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from layerindex.index.history import current_tags
from layerindex.index.images import (
    EntryRow,
    Finder,
    Row,
    details,
    image_paths,
    size_of,
)
from layerindex.index.resolve import IndexedImage
from layerindex.layer import overlay
from layerindex.layer.entries import EntryType
from layerindex.output import terminal_text
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
        "tags": current_tags(finder.reader, image),
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


@dataclass
class _PathBytes:
    """Every layer's bytes at one path (dive's EfficiencyData)."""

    total: int = 0
    smallest: int | None = None
    hidden: list[tuple[int, int]] = field(default_factory=list)  # (position, bytes) replaced

    def add(self, size: int) -> None:
        self.total += size
        self.smallest = size if self.smallest is None else min(self.smallest, size)


@dataclass(frozen=True)
class Efficiency:
    efficiency: float  # sum of each path's smallest / sum of totals; 1.0 without file bytes
    wasted_bytes: int
    wasted_by_layer: tuple[int, ...]  # bytes of each layer's content hidden later


Layer = Iterable[tuple[str, EntryType, int]]  # (path, type, size) of each entry


def efficiency(layer_entries: Sequence[Layer]) -> Efficiency:
    """``path_efficiency`` of layers held in memory (base first)."""
    return path_efficiency(overlay.by_path(layer_entries), len(layer_entries))


def path_efficiency(paths: Iterable[tuple[str, overlay.Held[int]]], layer_count: int) -> Efficiency:
    """dive's image efficiency (dive/filetree/efficiency.go) over an image's paths, each with
    its entries as (position, type, size), in path order (``overlay.by_path``).

    For each path, every layer's entry there counts its bytes; a deletion (whiteout, opaque
    directory, a file where a directory was) counts the bytes of each path it deletes, as dive's
    whiteouts do. A path wastes its total minus its smallest. Those bytes are charged to the
    layers whose content there is replaced or deleted later: each its own bytes first, and what
    dive counts beyond that (a smaller version came first) to the last of them.
    """
    wasted_by_layer = [0] * layer_count
    smallest_sum = total_sum = 0
    deletions = overlay.Deletions()
    for path, held in paths:
        reaching = deletions.reaching(path, held)
        record = _PathBytes()
        shown: tuple[int, int] | None = None  # (position, bytes) of the version in the view
        for position, kind, size in held:
            if shown is not None:
                deleted_at = overlay.next_deletion(reaching, shown[0])
                if deleted_at is not None and deleted_at <= position:
                    record.hidden.append(shown)
                    record.add(shown[1])  # a deletion counts what it deletes
                    shown = None
            if kind in (EntryType.WHITEOUT, EntryType.OPAQUE):
                continue
            size = size if kind is EntryType.FILE else 0
            if shown is not None:
                record.hidden.append(shown)
                record.add(size)
            elif kind is not EntryType.DIR:
                # A new directory holds no bytes; counting its 0 would make a file that later
                # takes its place look wasted (dive counts only leaves).
                record.add(size)
            shown = (position, size)
        if shown is not None and overlay.next_deletion(reaching, shown[0]) is not None:
            record.hidden.append(shown)
            record.add(shown[1])
        smallest = record.smallest or 0
        smallest_sum += smallest
        total_sum += record.total
        wasted = record.total - smallest
        for lower_position, size in record.hidden:
            wasted_by_layer[lower_position] += size
            wasted -= size
        if record.hidden:  # never negative: total - smallest covers every hidden version
            wasted_by_layer[record.hidden[-1][0]] += wasted
    return Efficiency(
        efficiency=smallest_sum / total_sum if total_sum else 1.0,
        wasted_bytes=total_sum - smallest_sum,
        wasted_by_layer=tuple(wasted_by_layer),
    )


@dataclass(frozen=True)
class LayerReport:
    image: IndexedImage
    layers: list[Row]
    size: int  # uncompressed bytes of the indexed layers
    wasted_bytes: int
    efficiency: float
    not_indexed: int  # layers left out of the sums (skipped, failed, pending)


def layer_report(finder: Finder, image: IndexedImage) -> LayerReport:
    """Each layer with its sizes, history command, bytes added and wasted; the image's efficiency
    over its indexed layers."""
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

    result = path_efficiency(sizes(image_paths(finder.reader, image)), len(stack))
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
    return LayerReport(
        image=image,
        layers=rows,
        size=sum(lr.uncompressed_size or 0 for lr in stack),
        wasted_bytes=result.wasted_bytes,
        efficiency=result.efficiency,
        not_indexed=sum(1 for lr in stack if lr.diff_ref is None),
    )


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
    field("Tags", ", ".join(data["tags"]) or "-")
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
