"""How layers stack into an image's filesystem (image-spec layer.md, "Applying changesets").

Each rule names why it holds; finder (``find``'s states) and ``ls REF`` (the final view) share them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple, TypeVar

from layerindex.layer.entries import EntryType

State = Literal["present", "overwritten", "deleted"]


class Fate(NamedTuple):
    state: State
    by_position: int | None  # the layer that overwrote or deleted it


PRESENT = Fate("present", None)


def ancestors(path: str) -> Iterator[str]:
    """Proper ancestors of ``path``, nearest first: ``/a/b/c`` → ``/a/b``, ``/a``, ``/``."""
    while path != "/":
        path = posixpath.dirname(path)
        yield path


def effect(upper_path: str, upper_type: EntryType, lower_path: str) -> State | None:
    """What an entry of a *later* layer does to ``lower_path`` of an earlier one, if anything."""
    if upper_path == lower_path:
        # ".wh.NAME" deletes NAME; any other entry at the same path replaces it.
        if upper_type is EntryType.WHITEOUT:
            return "deleted"
        return None if upper_type is EntryType.OPAQUE else "overwritten"
    if not lower_path.startswith(upper_path.rstrip("/") + "/"):
        return None
    # Below this point upper_path is a proper ancestor of lower_path.
    if upper_type in (EntryType.WHITEOUT, EntryType.OPAQUE):
        # Deleting a directory deletes what is in it; an opaque marker hides every lower child.
        return "deleted"
    if upper_type is not EntryType.DIR:
        # A file or link where a directory was replaces the whole directory.
        return "overwritten"
    return None  # a directory over a directory: the contents merge


def fate(position: int, path: str, later: Iterable[tuple[int, str, EntryType]]) -> Fate:
    """The fate of ``path`` written by layer ``position``, given entries of the image's layers.

    ``later`` may hold entries of any layer at ``path`` or its ancestors (opaque markers at the
    directory they make opaque); those of layers at or below ``position`` are ignored, since a
    layer's own opaque marker and whiteouts apply only to the layers beneath it. Within the
    deciding layer a deletion wins over an overwrite, whatever the order of ``later``: its
    whiteouts and opaque markers are applied before its other entries.
    """
    first: Fate = PRESENT
    for upper_position, upper_path, upper_type in later:
        if upper_position <= position:
            continue
        if first.by_position is not None and (
            upper_position > first.by_position
            or (upper_position == first.by_position and first.state == "deleted")
        ):
            continue
        state = effect(upper_path, upper_type, path)
        if state is not None and (upper_position != first.by_position or state == "deleted"):
            first = Fate(state, upper_position)
    return first


T = TypeVar("T")


def final_view(
    layer_entries: Iterable[Iterable[tuple[str, EntryType, T]]],
) -> dict[str, tuple[int, EntryType, T]]:
    """Apply layers in order (base first): what a container started from the image sees.

    Each layer gives (path, type, payload) rows, an opaque marker at the directory it makes
    opaque; the result maps path → (position, type, payload).
    """
    view: dict[str, tuple[int, EntryType, T]] = {}
    for position, rows in enumerate(layer_entries):
        layer = list(rows)
        # Whiteouts and opaque markers apply to the lower layers first, whatever their order in
        # the tar (image-spec: "applied first, before creating the new version").
        cut_with_self: set[str] = set()  # this path and everything under it
        cut_below: set[str] = set()  # only what is under this path
        for path, entry_type, _payload in layer:
            if entry_type is EntryType.WHITEOUT:
                cut_with_self.add(path)
            elif entry_type is EntryType.OPAQUE or entry_type is not EntryType.DIR:
                cut_below.add(path)
        if cut_with_self or cut_below:
            cuts = cut_with_self | cut_below
            for path in [p for p in view if p in cut_with_self or _under_any(p, cuts)]:
                del view[path]
        for path, entry_type, payload in layer:
            if entry_type not in (EntryType.WHITEOUT, EntryType.OPAQUE):
                view[path] = (position, entry_type, payload)
    return view


def _under_any(path: str, dirs: set[str]) -> bool:
    return any(parent in dirs for parent in ancestors(path))
