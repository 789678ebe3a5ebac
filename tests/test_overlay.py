"""The layer-stacking rules, one test each (image-spec layer.md, "Applying changesets")."""

from __future__ import annotations

from layerindex.layer.entries import EntryType as T
from layerindex.layer.overlay import Fate, ancestors, fate, final_view


def test_ancestors_nearest_first() -> None:
    assert list(ancestors("/a/b/c")) == ["/a/b", "/a", "/"]
    assert list(ancestors("/")) == []


def test_untouched_path_is_present() -> None:
    assert fate(0, "/a/b", [(0, "/a/b", T.FILE), (1, "/c", T.FILE)]) == Fate("present", None)


def test_same_path_in_later_layer_overwrites() -> None:
    assert fate(0, "/a/b", [(2, "/a/b", T.FILE)]) == Fate("overwritten", 2)


def test_whiteout_deletes_the_named_path() -> None:
    assert fate(0, "/a/b", [(1, "/a/b", T.WHITEOUT)]) == Fate("deleted", 1)


def test_whiteout_of_a_directory_deletes_its_contents() -> None:
    assert fate(0, "/a/b/c", [(3, "/a", T.WHITEOUT)]) == Fate("deleted", 3)


def test_opaque_directory_hides_lower_children_and_descendants() -> None:
    assert fate(0, "/a/b/c", [(1, "/a", T.OPAQUE)]) == Fate("deleted", 1)


def test_opaque_marker_does_not_hide_its_own_layer() -> None:
    # moby PR #17819: files added in the same layer as the opaque marker survive.
    assert fate(1, "/a/b", [(1, "/a", T.OPAQUE)]) == Fate("present", None)


def test_opaque_marker_does_not_delete_the_directory_itself() -> None:
    assert fate(0, "/a", [(1, "/a", T.OPAQUE)]) == Fate("present", None)


def test_non_directory_replacing_a_directory_deletes_its_contents() -> None:
    # /usr/lib/x went with its directory; nothing was written in its place.
    assert fate(0, "/usr/lib/x", [(1, "/usr/lib", T.SYMLINK)]) == Fate("deleted", 1)
    assert fate(0, "/usr/lib/x", [(1, "/usr", T.FILE)]) == Fate("deleted", 1)


def test_directory_over_directory_merges() -> None:
    assert fate(0, "/a/b", [(1, "/a", T.DIR)]) == Fate("present", None)


def test_earliest_later_change_decides() -> None:
    later = [(3, "/a/b", T.FILE), (2, "/a/b", T.WHITEOUT), (4, "/a", T.WHITEOUT)]
    assert fate(0, "/a/b", later) == Fate("deleted", 2)


def test_similar_prefix_is_not_an_ancestor() -> None:
    assert fate(0, "/ab/c", [(1, "/a", T.WHITEOUT)]) == Fate("present", None)


def test_final_view_applies_whiteouts_opaque_and_replacement() -> None:
    layers: list[list[tuple[str, T, str | None]]] = [
        [
            ("/a", T.DIR, "l0"),
            ("/a/x", T.FILE, "l0"),
            ("/b", T.DIR, "l0"),
            ("/b/y", T.FILE, "l0"),
        ],
        [("/a/z", T.FILE, "l1"), ("/a", T.OPAQUE, None), ("/b", T.SYMLINK, "l1")],
        [("/a/z", T.WHITEOUT, None), ("/c", T.FILE, "l2")],
    ]
    assert final_view(layers) == {
        "/a": (0, T.DIR, "l0"),
        "/b": (1, T.SYMLINK, "l1"),
        "/c": (2, T.FILE, "l2"),
    }


def test_final_view_later_layer_wins() -> None:
    view = final_view([[("/etc/os-release", T.FILE, 1)], [("/etc/os-release", T.FILE, 2)]])
    assert view == {"/etc/os-release": (1, T.FILE, 2)}


def test_a_deletion_decides_its_layer_whatever_the_order() -> None:
    # Layer 2 whites out /a/b and writes a new /a/b/c: the old /a/b/c was deleted first.
    later = [(2, "/a/b/c", T.FILE), (2, "/a/b", T.WHITEOUT)]
    assert fate(1, "/a/b/c", later) == Fate("deleted", 2)
    assert fate(1, "/a/b/c", later[::-1]) == Fate("deleted", 2)
    # An earlier layer's overwrite still comes first.
    assert fate(0, "/a/b/c", [(1, "/a/b/c", T.FILE), *later]) == Fate("overwritten", 1)
