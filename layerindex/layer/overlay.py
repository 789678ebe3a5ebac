"""How layers stack into an image's filesystem (image-spec layer.md, "Applying changesets").

Each rule names why it holds; finder (``find``'s states) and ``ls REF`` (the final view) share them.
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Iterable, Iterator, Sequence
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
    if upper_type is EntryType.DIR:
        return None  # a directory over a directory: the contents merge
    # Deleting a directory deletes what is in it; an opaque marker hides every lower child; a
    # file or link where a directory was removes the directory with all in it. Nothing took
    # lower_path's own place: it was deleted, not overwritten.
    return "deleted"


def fate(position: int, path: str, later: Iterable[tuple[int, str, EntryType]]) -> Fate:
    """The fate of ``path`` written by layer ``position``, given entries of the image's layers.

    ``later`` may hold entries of any layer at ``path`` or its ancestors (opaque markers at the
    directory they make opaque); those of layers at or below ``position`` are ignored, since a
    layer's own opaque marker and whiteouts apply only to the layers beneath it. Within the
    deciding layer a deletion wins over an overwrite, whatever the order of ``later``: its
    whiteouts and opaque markers are applied before its other entries.
    """
    return fates(path, [position], later)[position]


def fates(
    path: str, positions: Iterable[int], later: Iterable[tuple[int, str, EntryType]]
) -> dict[int, Fate]:
    """``fate(position, path, later)`` for each of these positions, in one pass over
    ``later``: a path written by thousands of layers costs no more than their count (log)."""
    deciding: dict[int, State] = {}  # layer → what it does to the path; a deletion wins
    for upper_position, upper_path, upper_type in later:
        state = effect(upper_path, upper_type, path)
        if state is not None and deciding.get(upper_position) != "deleted":
            deciding[upper_position] = state
    uppers = sorted(deciding)
    found = {}
    for position in positions:
        i = bisect.bisect_right(uppers, position)
        found[position] = Fate(deciding[uppers[i]], uppers[i]) if i < len(uppers) else PRESENT
    return found


T = TypeVar("T")
Held = Sequence[tuple[int, EntryType, T]]  # a path's entries: (position, type, payload), base first


def by_path(
    layer_entries: Iterable[Iterable[tuple[str, EntryType, T]]],
) -> list[tuple[str, Held[T]]]:
    """Layers' rows (base first) as each path with its entries, in path order: what the
    functions below read, for rows already in memory (the index gives them in this order)."""
    held: dict[str, list[tuple[int, EntryType, T]]] = {}
    for position, rows in enumerate(layer_entries):
        for path, entry_type, payload in rows:
            held.setdefault(path, []).append((position, entry_type, payload))
    return sorted(held.items(), key=lambda item: item[0])


class Deletions:
    """Where the paths read so far (in path order) delete what lies under them, kept while
    paths under them may still come.

    Every path under P sorts between P and P + "0" ("0" follows "/"), so once a path at or
    after P + "0" is read, P's deletions are dropped. Those kept are of prefixes of the path
    being read: at most as many as it has characters, whatever the image holds."""

    def __init__(self) -> None:
        self.kept: list[tuple[str, list[int]]] = []  # (path, positions), in path order

    def reaching(self, path: str, held: Held[T]) -> list[list[int]]:
        """The positions, each list rising, of the layers whose entries delete ``path``'s
        lower versions: its own whiteouts, and its ancestors' entries but directories (a
        whiteout or opaque marker deletes what is under it, a file or link replaces it)."""
        while self.kept and _subtree_end(self.kept[-1][0]) <= path:
            self.kept.pop()
        found = [positions for upper, positions in self.kept if _is_ancestor(upper, path)]
        own = [position for position, entry_type, _ in held if entry_type is EntryType.WHITEOUT]
        if own:
            found.append(own)
        below = [position for position, entry_type, _ in held if entry_type is not EntryType.DIR]
        if below:
            self.kept.append((path, below))
        return found


def next_deletion(deletions: list[list[int]], position: int) -> int | None:
    """The first layer above ``position`` that deletes the path, if any."""
    first = None
    for positions in deletions:
        i = bisect.bisect_right(positions, position)
        if i < len(positions) and (first is None or positions[i] < first):
            first = positions[i]
    return first


def final_entries(paths: Iterable[tuple[str, Held[T]]]) -> Iterator[tuple[str, int, EntryType, T]]:
    """Apply the layers (each path with its entries, in path order, as ``by_path`` gives):
    what a container started from the image sees, as (path, position, type, payload) in path
    order.

    A path shows its topmost entry but whiteouts and opaque markers, unless a layer above it
    deletes it. A layer's deletions apply to the layers below it only (image-spec: "applied
    first, before creating the new version"): an entry and a deletion in one layer leave the
    entry.
    """
    deletions = Deletions()
    for path, held in paths:
        reaching = deletions.reaching(path, held)
        top = None
        for position, entry_type, payload in held:
            if entry_type not in (EntryType.WHITEOUT, EntryType.OPAQUE):
                top = (position, entry_type, payload)
        if top is not None and next_deletion(reaching, top[0]) is None:
            yield path, *top


def final_view(
    layer_entries: Iterable[Iterable[tuple[str, EntryType, T]]],
) -> dict[str, tuple[int, EntryType, T]]:
    """``final_entries`` of layers held in memory (base first), as path → (position, type,
    payload); an opaque marker stands at the directory it makes opaque."""
    return {
        path: (position, entry_type, payload)
        for path, position, entry_type, payload in final_entries(by_path(layer_entries))
    }


def _subtree_end(path: str) -> str:
    """The first string after every path under ``path``."""
    return ("" if path == "/" else path) + "0"


def _is_ancestor(upper: str, path: str) -> bool:
    return upper == "/" or path.startswith(upper + "/")
