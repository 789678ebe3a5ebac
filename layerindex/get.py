"""``layerindex get``: one file of an image, fetched from the one layer that provides it.

The index says which layer of the image's final filesystem holds a path, its size and (with
``--hash-files``) its sha256. Only that layer's blob is streamed, through the walker ``index``
uses (``walker.LayerWalker``, its limits on headers and names included), which hands the
member's bytes to the output as they pass. What is written is exactly what the image holds:
- with an indexed sha256, the download stops at the first copy of the member with that hash:
  for a file early in a big layer most of the blob never arrives;
- without one, the layer is read to its end: a path written twice in a layer is the last
  copy (as in the index and in a container), and the blob's digest proves the bytes.
The member's size is checked in both cases.

Paths are resolved against the final filesystem from the index, never the local disk:
- symlinks are followed, relative ones from their directory, absolute ones from the image's
  root, at most ``MAX_SYMLINKS`` of them (Linux's limit), so a loop is an error, not a hang;
- ``..`` stops at the image's root, as it does in a container;
- a hard link's data is the member it names, earlier in the same layer (tar semantics); one
  naming a path the layer does not hold links to that path in the layers below.
Nothing is written anywhere but the output the caller names: bytes go to a temporary file next
to it, renamed over it only once every check passed, or to stdout once they passed.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from layerindex.errors import DigestMismatch, LayerFormatError, NotFound, UsageError
from layerindex.index.database import Reader
from layerindex.index.images import layer_entries_sql
from layerindex.index.resolve import Wording, the_image
from layerindex.layer import overlay
from layerindex.layer.entries import (
    OPAQUE_MARKER,
    TYPE_NAMES,
    Entry,
    EntryType,
    path_bytes,
    query_path,
    split_path,
    stored_path,
)
from layerindex.layer.walker import LayerWalker

if TYPE_CHECKING:
    from layerindex.reference import Reference
    from layerindex.registry.client import RegistryClient

log = logging.getLogger("layerindex")

MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS: more links than this in one lookup is a loop (ELOOP)
COPY_CHUNK = 1 << 20
STDOUT_SPOOL = 16 << 20  # bytes for stdout kept in memory until checked; beyond, a temp file
_DELETIONS = (EntryType.WHITEOUT, EntryType.OPAQUE)
GET_WORDING = Wording(
    no_platform="{ref} is not indexed for {platform}; run: "
    "layerindex index --platform {platform} {reference}",
    several="{ref} is indexed for {platforms}; choose one with --platform",
)


@dataclass(frozen=True)
class Located:
    """An entry of an image's final filesystem (or of the layers below a hard link)."""

    path: str
    position: int  # the layer, 0 = base
    layer_digest: str
    type: EntryType
    size: int
    mode: int
    link_target: str | None
    sha256: str | None


@dataclass(frozen=True)
class Fetched:
    """What ``get`` wrote."""

    path: str  # as asked, in the stored text form
    source: Located  # the entry whose bytes were written (a symlink itself with follow=False)
    size: int  # bytes written
    sha256: str  # of the bytes written
    bytes_read: int  # compressed bytes read from the blob; 0 when nothing was downloaded
    layer_size: int  # the blob's size from the manifest


@dataclass(frozen=True)
class ImageLayer:
    position: int
    digest: str
    size: int
    diff_ref: int | None


class ImageView:
    """Lookups in one indexed image's final filesystem, straight from the database."""

    def __init__(self, reader: Reader, ref: Reference, platform: str | None) -> None:
        self.reader = reader
        self.ref = ref
        image = the_image(reader, ref, platform, GET_WORDING)
        if image.indexed_at is None:
            # A layer not indexed yet might replace or delete any path.
            raise NotFound(
                f"{ref.familiar()} ({image.platform}) is not fully indexed; run: "
                f"layerindex index {ref}"
            )
        self.platform: str = image.platform
        self.layers = [
            ImageLayer(*row)
            for row in reader.rows(
                "SELECT il.position, l.digest, l.size, l.diff_ref FROM image_layers il "
                "JOIN layers l ON l.id = il.layer_id WHERE il.image_id = ? ORDER BY il.position",
                [image.id],
            )
        ]

    def _rows(self, paths: Sequence[tuple[str, str]], below: int) -> list[Located]:
        """Entries at these (dir, name) pairs in layers under position ``below``."""
        positions: dict[int, list[ImageLayer]] = {}
        for layer in self.layers[:below]:
            if layer.diff_ref is not None:  # a skipped (foreign) layer has no entries
                positions.setdefault(layer.diff_ref, []).append(layer)
        if not positions or not paths:
            return []
        pairs = sorted(set(paths))
        sql, params = layer_entries_sql(self.reader.dialect, list(positions))
        at = " OR ".join(["(d.path = ? AND n.name = ?)"] * len(pairs))
        return [
            Located(
                stored_path(directory, name),
                layer.position,
                layer.digest,
                TYPE_NAMES[kind],
                size,
                mode,
                link_target,
                sha256,
            )
            for diff_ref, directory, name, kind, size, mode, _uid, _gid, link_target, sha256 in (
                self.reader.rows(f"{sql} AND ({at})", [*params, *itertools.chain(*pairs)])
            )
            for layer in positions[diff_ref]  # the same layer may sit twice in an image
        ]

    def lookup(self, path: str, below: int | None = None) -> Located | None:
        """``path`` as the layers under ``below`` (all by default) stack it, links unresolved."""
        wanted = [split_path(path)]
        wanted += [split_path(a) for a in overlay.ancestors(path) if a != "/"]
        wanted += [(a, OPAQUE_MARKER) for a in overlay.ancestors(path)]
        # An opaque marker on the path itself hides only what is below it, not the directory.
        rows = self._rows(wanted, len(self.layers) if below is None else below)
        here = [r for r in rows if r.path == path and r.type not in _DELETIONS]
        if not here:
            return None
        top = max(here, key=lambda r: r.position)
        later = [(r.position, r.path, r.type) for r in rows]
        # The topmost entry decides: whatever deletes or replaces it hides the lower ones too.
        return top if overlay.fate(top.position, path, later).state == "present" else None

    def resolve(self, path: str, *, follow: bool = True, below: int | None = None) -> Located:
        """The entry ``path`` leads to, symlinks in its directories always followed, a symlink
        at its end only when ``follow``."""
        asked = path
        pending = [c for c in path.split("/") if c]
        current = "/"
        hops = 0
        located: Located | None = None
        while pending:
            name = pending.pop(0)
            if name == ".":
                continue
            if name == "..":
                current = os.path.dirname(current)  # "/.." is "/", as in the kernel
                continue
            candidate = current.rstrip("/") + "/" + name
            located = self.lookup(candidate, below)
            if located is None:
                if pending:
                    current = candidate  # a directory no layer lists: its children may exist
                    continue
                raise NotFound(self._not_there(asked, candidate))
            if located.type is EntryType.SYMLINK and (pending or follow):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise UsageError(
                        f"{asked}: too many levels of symbolic links in {self.describe()} "
                        f"(a loop through {candidate}?)"
                    )
                target = located.link_target or ""
                if target.startswith("/"):
                    current = "/"  # an absolute target is from the image's root, not ours
                pending = [c for c in target.split("/") if c] + pending
                continue
            if pending and located.type is not EntryType.DIR:
                raise NotFound(f"{asked}: {candidate} is a {located.type} in {self.describe()}")
            current = candidate
        if located is None or current == "/":
            raise UsageError(f"{asked}: is a directory (the root) in {self.describe()}")
        if current != located.path:
            # The last component was ".." or "."; what it named is a directory.
            raise UsageError(f"{asked}: is a directory in {self.describe()}")
        return located

    def layer(self, position: int) -> ImageLayer:
        return self.layers[position]

    def describe(self) -> str:
        return f"{self.ref.familiar()} ({self.platform})"

    def _not_there(self, asked: str, missing: str) -> str:
        where = "" if missing == asked else f" ({missing} does not exist)"
        return f"{asked}: not in the image's filesystem{where}: {self.describe()}"


@dataclass(frozen=True)
class _Wanted:
    """The member to copy out of a layer stream and what the index says it holds."""

    member: str  # the path of the member holding the data
    hard_link: str | None  # the hard link (later in the stream) whose data that is
    size: int
    sha256: str | None


def locate(
    reader: Reader, ref: Reference, path: str, *, platform: str | None = None, follow: bool = True
) -> tuple[Located, Located, ImageLayer]:
    """(the entry ``path`` resolves to, the regular file holding its data, that file's layer);
    no network. The first two differ for a hard link. With ``follow=False`` a symlink at the end
    of ``path`` is returned as both."""
    view = ImageView(reader, ref, platform)
    entry = view.resolve(path, follow=follow)
    data = entry
    for _ in range(MAX_SYMLINKS):
        if data.type is not EntryType.HARDLINK:
            break
        target = data.link_target or ""
        in_layer = view.lookup(target, data.position + 1)
        if in_layer is None or in_layer.position != data.position:
            # Not in this layer: a link to the file the layers below have at that path.
            in_layer = view.resolve(target, follow=False, below=data.position)
        data = in_layer
    else:
        raise UsageError(f"{path}: a chain of hard links that does not end")
    if data.type is EntryType.DIR:
        raise UsageError(f"{path}: is a directory in {view.describe()}")
    if data.type not in (EntryType.FILE, EntryType.SYMLINK):
        raise UsageError(f"{path}: is a {data.type}, not a regular file, in {view.describe()}")
    return entry, data, view.layer(data.position)


def get(
    reader: Reader,
    client: RegistryClient,
    ref: Reference,
    path_arg: str,
    out: BinaryIO,
    *,
    platform: str | None = None,
    follow: bool = True,
) -> Fetched:
    """Write the file ``path_arg`` names in image ``ref`` to ``out`` (see the module docstring).

    ``out`` must be seekable: a member the index does not agree with is written again."""
    path = query_path(path_arg)
    entry, data, layer = locate(reader, ref, path, platform=platform, follow=follow)
    if data.type is EntryType.SYMLINK:  # follow=False: the link's own content, its target
        target = path_bytes(data.link_target or "")
        out.write(target)
        digest = "sha256:" + hashlib.sha256(target).hexdigest()
        return Fetched(path, data, len(target), digest, 0, layer.size)
    hard_link = entry.path if entry.type is EntryType.HARDLINK else None
    if hard_link is not None and data.position != entry.position:
        hard_link = None  # the data sits in a lower layer, at its own path
    wanted = _Wanted(data.path, hard_link, data.size, data.sha256)
    where = f"layer {layer.digest} of {ref.familiar()}"
    with client.open_blob(ref, layer.digest, layer.size) as blob:
        size, digest, bytes_read = _copy_member(blob, where, layer.digest, wanted, out)
    log.info(
        "%s: %d bytes from layer %d (%s); read %d of %d compressed bytes",
        path,
        size,
        layer.position,
        layer.digest,
        bytes_read,
        layer.size,
    )
    return Fetched(path, data, size, digest, bytes_read, layer.size)


class _Copy:
    """The wanted member's bytes, written to ``out`` as the walker reads them. A path written
    twice in one layer is copied twice, the later copy over the earlier: the index (like a
    container) holds the last one."""

    def __init__(self, wanted: _Wanted, out: BinaryIO) -> None:
        self.wanted = wanted
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self.copied: tuple[int, str] | None = None  # (size, sha256) of the last copy read
        self.linked = False  # the hard link came: its data is the copy before it, whatever follows

    def sink(self, path: str) -> Callable[[memoryview], object] | None:
        if path != self.wanted.member or self.linked:
            return None
        self.out.seek(0)
        self.out.truncate()
        self.sha = hashlib.sha256()
        self.size = 0
        self.copied = None
        return self._write

    def _write(self, data: memoryview) -> None:
        self.sha.update(data)
        self.out.write(data)
        self.size += len(data)

    def done(self, entry: Entry) -> bool:
        """Note the walker's next entry; True once the copy is proven to be the index's, by
        the indexed sha256 (without one, only the blob's digest at the layer's end proves it)."""
        wanted = self.wanted
        if entry.path == wanted.member and entry.type is EntryType.FILE and not self.linked:
            self.copied = self.size, "sha256:" + self.sha.hexdigest()
        elif entry.path == wanted.hard_link and entry.type is EntryType.HARDLINK:
            self.linked = self.copied is not None
        return self.copied is not None and self.copied[1] == wanted.sha256

    def result(self) -> tuple[int, str]:
        if self.copied is None:
            raise RuntimeError("no copy of the member was read")
        return self.copied

    def disagreement(self) -> str | None:
        """How the copy differs from what the index says, if it does."""
        wanted = self.wanted
        if self.copied is None:
            return f"{wanted.member} is not in the layer although the index lists it"
        size, digest = self.copied
        if size != wanted.size:
            return (
                f"{wanted.member} is {size} bytes in the layer but {wanted.size} in the "
                "index (the registry sent other bytes, or the index is stale)"
            )
        if wanted.sha256 is not None and digest != wanted.sha256:
            return (
                f"{wanted.member}: sha256 mismatch: the index says {wanted.sha256}, "
                f"the bytes received hash to {digest}"
            )
        return None


def _copy_member(
    blob: BinaryIO, where: str, layer_digest: str, wanted: _Wanted, out: BinaryIO
) -> tuple[int, str, int]:
    """(size, sha256, compressed bytes read) of ``wanted``'s member copied to ``out``.

    The layer is read with the walker ``index`` uses (its limits included) until the copy is
    proven: by the indexed sha256 as soon as a copy has it, else by the blob's digest once
    the layer has been read to its end (which also makes the copy the layer's last)."""
    copy = _Copy(wanted, out)
    walker = LayerWalker(blob, where=where, content=copy.sink)
    entries = iter(walker)
    try:
        for entry in entries:
            if copy.done(entry):
                entries.close()  # stops the decompressing thread: nothing more is read
                return (*copy.result(), walker.compressed_size)
    except LayerFormatError as exc:
        # It was indexed, so it parsed then: say so if these are other bytes than the blob's.
        if (blob_problem := _blob_problem(walker, layer_digest)) is not None:
            unreadable = str(exc).removeprefix(f"{where}: ")
            raise DigestMismatch(f"{where}: {blob_problem}; they read as: {unreadable}") from None
        raise
    finally:
        entries.close()  # on Ctrl-C too: the thread stops before the blob stream is closed
    problem = copy.disagreement()
    if (blob_problem := _blob_problem(walker, layer_digest)) is not None:
        also = f"; {problem}" if problem else ""
        raise DigestMismatch(f"{where}: {blob_problem}{also}; nothing was written")
    if problem is not None:
        error = LayerFormatError if copy.copied is None else DigestMismatch
        raise error(f"{where}: {problem}; nothing was written")
    return (*copy.result(), walker.compressed_size)


def _blob_problem(walker: LayerWalker, digest: str) -> str | None:
    """What is wrong with the whole blob's digest, reading what the walker left of it."""
    seen = walker.rest_digest()
    if seen == digest:
        return None
    return (
        f"blob digest mismatch: got {seen} ({walker.compressed_size} bytes); the registry or a "
        "proxy sent other bytes"
    )


# --- output ----------------------------------------------------------------------------------


def _existing_kind(output: Path) -> int | None:
    """The file type (``stat.S_IFMT``) at ``output``, symlinks followed; None if none is there."""
    try:
        return stat.S_IFMT(output.stat().st_mode)
    except FileNotFoundError:
        return None  # nothing there, or a dangling symlink
    except OSError as exc:
        raise UsageError(f"{output}: {exc.strerror}") from None


# Written into rather than replaced, as cp and a shell's redirection do: /dev/null, a tty, a FIFO.
_STREAMS = (stat.S_IFCHR, stat.S_IFIFO)
_REFUSED = {stat.S_IFDIR: "a directory", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


@contextmanager
def output_file(output: Path, *, force: bool) -> Iterator[BinaryIO]:
    """A temporary file next to ``output``, renamed over it when the block ends cleanly and
    removed when it does not: a failed get leaves nothing behind, and never half a file.

    Only a regular file (or a symlink, itself replaced, never written through) is replaced,
    and only with ``force``; a character device or FIFO is for ``_write_into``."""
    kind = _existing_kind(output)
    if kind == stat.S_IFDIR:
        raise UsageError(f"{output}: is a directory; give a file name with -o")
    if kind is not None and kind != stat.S_IFREG:
        what = _REFUSED.get(kind, "not a regular file")
        raise UsageError(
            f"{output}: is {what}; get replaces only a regular file, and writes into a "
            "character device or a FIFO"
        )
    if not force and (kind is not None or output.is_symlink()):
        raise UsageError(f"{output}: already exists; use --force to replace it")
    parent = output.parent
    if not parent.is_dir():
        raise UsageError(f"{parent}: no such directory")
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise UsageError(f"{output}: cannot create a file in {parent}: {exc.strerror}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "w+b") as stream:
            yield stream
        # os.replace renames over a symlink at ``output`` rather than writing through it.
        try:
            os.replace(temp, output)
        except OSError as exc:
            raise UsageError(f"{output}: cannot replace it: {exc.strerror}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_into(output: Path, checked: BinaryIO) -> None:
    """Copy ``checked`` into the character device or FIFO at ``output`` (opened, never
    created, replaced or truncated: /dev/null stays /dev/null)."""
    try:
        handle = os.open(output, os.O_WRONLY | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"{output}: cannot open it for writing: {exc.strerror}") from None
    with os.fdopen(handle, "wb") as stream:
        if stat.S_IFMT(os.fstat(handle).st_mode) not in _STREAMS:  # replaced since we looked
            raise UsageError(f"{output}: changed while get ran; nothing was written")
        try:
            shutil.copyfileobj(checked, stream, COPY_CHUNK)
            stream.flush()
        except OSError as exc:
            raise UsageError(f"{output}: writing failed: {exc.strerror}") from None


def get_to(
    reader: Reader,
    client: RegistryClient,
    ref: Reference,
    path: str,
    *,
    output: Path | None,
    force: bool = False,
    platform: str | None = None,
    follow: bool = True,
    stdout: BinaryIO,
) -> Fetched:
    """``get`` into ``output`` (permission bits from the image, less set-id, sticky and the
    umask), or into stdout, a character device or a FIFO once every check passed."""
    if output is not None and _existing_kind(output) not in _STREAMS:
        with output_file(output, force=force) as stream:
            fetched = get(reader, client, ref, path, stream, platform=platform, follow=follow)
            if fetched.source.type is EntryType.FILE:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(stream.fileno(), fetched.source.mode & 0o777 & ~umask)
        return fetched
    with tempfile.SpooledTemporaryFile(STDOUT_SPOOL) as spool:
        spool_io = cast(BinaryIO, spool)
        fetched = get(reader, client, ref, path, spool_io, platform=platform, follow=follow)
        spool_io.seek(0)
        if output is not None:
            _write_into(output, spool_io)
            return fetched
        shutil.copyfileobj(spool_io, stdout, COPY_CHUNK)
        stdout.flush()
    return fetched
