"""What a layer holds: one ``Entry`` per tar member, with paths in one canonical text form."""

from __future__ import annotations

import enum
import os
import posixpath
from collections.abc import Callable
from typing import NamedTuple


class EntryType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    # Whiteouts are deletions, not files: ``/etc/.wh.foo`` is recorded as a WHITEOUT of ``/etc/foo``
    # and ``/etc/.wh..wh..opq`` as an OPAQUE mark on ``/etc`` (image-spec layer.md, "Whiteouts").
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"


class Entry(NamedTuple):
    """One member of a layer's tar stream, after whiteout decoding and path normalisation."""

    path: str  # canonical text form, see path_text(): "/usr/bin/x"
    type: EntryType
    size: int  # bytes of content (the logical size for sparse files), 0 for non-files
    mode: int  # permission bits and set-id/sticky bits only (no file-type bits)
    uid: int
    gid: int
    mtime: int
    link_target: str | None  # symlink target as written; hard link target as a canonical path
    sha256: str | None = None  # "sha256:<hex>" of a regular file's content, when hashing is asked


WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

# Entry types as stored: a small integer per row instead of a string.
TYPE_CODES: dict[EntryType, int] = {t: i for i, t in enumerate(EntryType)}
TYPE_NAMES: dict[int, EntryType] = {i: t for t, i in TYPE_CODES.items()}

# An Entry from a tuple of its fields, for hot loops: tuple.__new__ skips NamedTuple's
# Python-level __new__, a third of the cost of an Entry.
new_entry: Callable[[type[Entry], tuple[object, ...]], Entry] = tuple.__new__


def path_text(raw: bytes) -> str:
    """Turn a path's bytes into the text we store and compare.

    Valid UTF-8 without backslashes is kept as it is (nearly every path). Otherwise, as ``ls -b``
    does, a backslash becomes ``\\\\`` and each byte that is not valid UTF-8 becomes ``\\xNN``:
    the mapping is reversible, so names that are not UTF-8 lose no bytes and can still be found.
    """
    if b"\\" not in raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    text = raw.decode("utf-8", "surrogateescape").replace("\\", "\\\\")
    if not any(0xDC80 <= ord(c) <= 0xDCFF for c in text):
        return text
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def path_bytes(text: str) -> bytes:
    """Inverse of path_text()."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and text.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif c == "\\" and text.startswith("\\x", i) and i + 4 <= len(text):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += c.encode("utf-8")
            i += 1
    return bytes(out)


def normalise(raw: bytes) -> str:
    """A tar member name as an absolute canonical path.

    ``./usr/bin/x``, ``usr/bin/x`` and ``/usr/bin/x/`` all mean ``/usr/bin/x``: layers are
    applied at the root, tools write any of these forms, and users search for the last one.
    ``..`` cannot climb above the root (paths from a tar are data, never places to write).
    """
    text = path_text(raw)
    norm = posixpath.normpath("/" + text)
    # normpath keeps a leading "//" (POSIX allows it a meaning); in a layer it means "/".
    return "/" + norm.lstrip("/")


def query_path(arg: str) -> str:
    """A path typed by a user (argv, already decoded by Python) in the stored text form."""
    return normalise(os.fsencode(arg))


def split_path(path: str) -> tuple[str, str]:
    """``/usr/bin/x`` → (``/usr/bin``, ``x``); ``/`` → (``/``, ``""``)."""
    head, _, tail = path.rpartition("/")
    return head or "/", tail


def stored_path(directory: str, name: str) -> str:
    """The path an entry row stands for; an opaque marker's is the directory it makes opaque."""
    if name == OPAQUE_MARKER:
        return directory
    return directory.rstrip("/") + "/" + name
