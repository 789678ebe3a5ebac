"""A layer's compressed bytes → one ``Entry`` per tar member, in one streaming pass.

The tar headers are parsed by hand, not with ``tarfile``: in stream mode tarfile walks ~31k
members/s and keeps every member in ``.members``, while a 512-byte header parser that skips data
blocks without touching them does several times that. Plain members (ustar headers, with or
without a pax header of times and paths) are read in C where ``layerindex.layer._tarscan`` was
built; it hands every other member back to the loop below, which holds all the rules.

Formats read: v7, ustar (prefix field), pax (``x``/``X`` and global ``g`` headers), GNU long
names and links (``L``/``K``), GNU old sparse (``S``) and pax sparse 0.0/0.1/1.0, base-256
numbers.

Which member types carry data follows Go's archive/tar and Python's tarfile (what Docker and
containerd extract with): links, devices, directories and fifos never do, whatever their size
field says; regular files and unknown types do.

Path rules (each has a test named after it in tests/test_walker.py):
- names are made canonical by ``entries.normalise`` (raw bytes, so non-UTF-8 names survive);
- the root directory member (``./``) is dropped: it is in every layer and nobody looks for "/";
- ``.wh..wh..opq`` yields an OPAQUE entry for its directory, ``.wh.NAME`` a WHITEOUT of NAME;
- other ``/.wh..wh.*`` members are AUFS bookkeeping that Docker skips on extraction: dropped;
- a path written twice is yielded twice; the later one wins (the store keeps the last);
- a member name longer than Linux's PATH_MAX (4096 bytes), with a component longer than
  NAME_MAX (255 bytes), or a link target longer than PATH_MAX fails the layer: no kernel
  could create it, and every reader of the index would carry it.

With ``content``, the walker also hands out file content: for each regular file it asks
``content(path)`` for a sink, which receives the member's bytes (sparse holes as zeros) as
they stream past, before the member's entry is yielded. ``layerindex get`` copies one file
so, through the same parser and limits as ``index``.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import suppress

from layerindex.errors import DigestMismatch, LayerFormatError
from layerindex.layer.compression import LayerStream, Readable
from layerindex.layer.entries import (
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    Entry,
    EntryType,
    new_entry,
    normalise,
    path_text,
)

Scan = Callable[[bytes, int, list[Entry], type[Entry], tuple[EntryType, ...], bool], int]
Sink = Callable[[memoryview], object]  # takes a regular file's content, piece by piece
Content = Callable[[str], Sink | None]  # a regular file's path → where its content goes, or None
_scan: Scan | None
try:  # the C fast path for plain members (layerindex/layer/_tarscan.c), built where a compiler is
    from layerindex.layer._tarscan import scan as _scan
except ImportError:  # the loop in _TarWalk.entries reads every member
    _scan = None


def has_fast_path() -> bool:
    """Whether ``layerindex.layer._tarscan`` was built; without it every member is read in
    Python."""
    return _scan is not None


BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
SPECIAL_MAX = 1 << 20  # largest pax / GNU long-name header we read into memory
SPARSE_HOLES_HASH_LIMIT = 1 << 30  # zero bytes we will hash for a sparse file's holes, at most
PATH_MAX = 4096  # Linux's limits (limits.h): a longer name or target fails the layer
NAME_MAX = 255
_ZEROS = memoryview(bytes(1 << 20))

_FILE, _DIR, _SYMLINK, _HARDLINK = (
    EntryType.FILE,
    EntryType.DIR,
    EntryType.SYMLINK,
    EntryType.HARDLINK,
)
_WHITEOUT, _OPAQUE = EntryType.WHITEOUT, EntryType.OPAQUE
_LINKS = (_SYMLINK, _HARDLINK)
# What _tarscan.scan yields for file, dir, symlink, hardlink, char, block, fifo members.
SCAN_TYPES = (_FILE, _DIR, _SYMLINK, _HARDLINK, EntryType.CHAR, EntryType.BLOCK, EntryType.FIFO)
TYPES: dict[int, EntryType] = {
    ord("0"): _FILE,
    0: _FILE,  # v7 "AREGTYPE"
    ord("7"): _FILE,  # contiguous file: a regular file everywhere but on Masscomp
    ord("S"): _FILE,  # GNU old sparse
    ord("1"): _HARDLINK,
    ord("2"): _SYMLINK,
    ord("3"): EntryType.CHAR,
    ord("4"): EntryType.BLOCK,
    ord("5"): _DIR,
    ord("6"): EntryType.FIFO,
    ord("D"): _DIR,  # GNU dumpdir: a directory whose data lists its contents
}
HEADER_ONLY = frozenset(ord(c) for c in "123456")  # types whose size field is not data length
PAX_LOCAL = (ord("x"), ord("X"))  # X: Solaris' name for the same pax extended header
PAX_GLOBAL = ord("g")
GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE, GNU_VOLUME = ord("L"), ord("K"), ord("S"), ord("V")
POSIX_MAGIC = b"ustar\x00"
TIME_KEYS = frozenset((b"mtime", b"atime", b"ctime"))
SPARSE_00_KEYS = (b"GNU.sparse.offset", b"GNU.sparse.numbytes")


class LayerWalker:
    """Iterate once over a layer blob; afterwards the attributes below describe what was read.

    Iteration raises ``LayerFormatError`` for anything that is not a readable (compressed) tar
    and ``DigestMismatch`` when ``digest`` or ``diff_id`` are given and the bytes differ: both
    before iteration ends, so a caller that commits only after a clean iteration never commits
    a bad layer.
    """

    compression: str  # "gzip" | "zstd" | "tar"
    compressed_size: int  # bytes read from stream
    uncompressed_size: int  # bytes of the tar stream
    digest_seen: str  # "sha256:<hex>" of the compressed bytes
    diff_id_seen: str  # "sha256:<hex>" of the tar stream

    def __init__(
        self,
        stream: Readable,
        *,
        digest: str | None = None,
        diff_id: str | None = None,
        hash_files: bool = False,
        where: str = "",
        content: Content | None = None,
    ) -> None:
        self.stream = stream
        self.digest = digest
        self.diff_id = diff_id
        self.hash_files = hash_files
        self.content = content
        self.where = where or "layer"
        self.compression = ""
        self.compressed_size = 0
        self.uncompressed_size = 0
        self.digest_seen = ""
        self.diff_id_seen = ""
        self._started = False
        self._layer: LayerStream | None = None

    def __iter__(self) -> Generator[Entry, None, None]:
        if self._started:
            raise RuntimeError("a LayerWalker reads its stream once; make a new one")
        self._started = True
        layer = self._layer = LayerStream(self.stream, self.where)
        chunks = layer.chunks()
        self.compression = layer.compression
        try:
            walk = _TarWalk(_Blocks(chunks, self.where), self.hash_files, self.content)
            yield from walk.entries()
            for _ in chunks:  # the blob may go on after the end blocks; the digests cover it all
                pass
        finally:
            chunks.close()  # on an error: stops the decompressing thread before we go on
            self.compressed_size = layer.compressed_size  # so far, when the caller stopped early
        self.uncompressed_size = layer.uncompressed_size
        self.digest_seen = "sha256:" + layer.compressed_sha256.hexdigest()
        self.diff_id_seen = "sha256:" + layer.tar_sha256.hexdigest()
        if self.digest is not None and self.digest != self.digest_seen:
            raise DigestMismatch(
                f"{self.where}: blob digest mismatch: expected {self.digest}, "
                f"got {self.digest_seen} ({self.compressed_size} bytes read)"
            )
        if self.diff_id is not None and self.diff_id != self.diff_id_seen:
            raise DigestMismatch(
                f"{self.where}: uncompressed diff_id mismatch: the image config's rootfs.diff_ids "
                f"says {self.diff_id}, the tar stream hashes to {self.diff_id_seen}"
            )

    def rest_digest(self) -> str:
        """The blob's digest after the walk stopped early or failed, reading (and hashing) what
        it left of the stream; a stream that fails ends the reading there. Sets
        ``compressed_size`` and ``digest_seen``."""
        if self._layer is None:
            raise RuntimeError("rest_digest: the walk has not started")
        sha = self._layer.compressed_sha256.copy()
        size = self._layer.compressed_size
        with suppress(OSError, LayerFormatError):
            while chunk := self.stream.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
        self.compressed_size = size
        self.digest_seen = "sha256:" + sha.hexdigest()
        return self.digest_seen


class _Blocks:
    """The tar stream as a cursor over decompressed chunks."""

    __slots__ = ("base", "buf", "chunks", "pos", "where")

    def __init__(self, chunks: Iterator[bytes], where: str) -> None:
        self.chunks = chunks
        self.where = where
        self.buf = b""
        self.pos = 0
        self.base = 0  # tar offset of buf[0]

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def error(self, what: str, offset: int | None = None) -> LayerFormatError:
        at = self.offset if offset is None else offset
        return LayerFormatError(f"{self.where}: {what} at tar offset {at}")

    def _fill(self, n: int) -> bool:
        """Make ``n`` bytes available at ``pos``; False if the stream ends first."""
        parts = [self.buf[self.pos :]]
        have = len(parts[0])
        self.base += self.pos
        while have < n:
            chunk = next(self.chunks, b"")
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf, self.pos = b"".join(parts), 0
        return have >= n

    def ahead(self) -> bytes:
        """The buffer, holding a whole block from ``pos`` on unless the stream ends first."""
        if len(self.buf) - self.pos < BLOCK:
            self._fill(BLOCK)
        return self.buf

    def header(self) -> bytes | None:
        """The next 512-byte block, or None at a clean end of stream."""
        if len(self.buf) - self.pos < BLOCK and not self._fill(BLOCK):
            if len(self.buf) == self.pos:
                return None
            raise self.error("tar stream ends inside a header")
        pos = self.pos
        self.pos = pos + BLOCK
        return self.buf[pos : pos + BLOCK]

    def read(self, n: int) -> bytes:
        if len(self.buf) - self.pos < n and not self._fill(n):
            raise self.error(f"tar stream ends inside a member's data ({n} bytes expected)")
        pos = self.pos
        self.pos = pos + n
        return self.buf[pos : pos + n]

    def skip(self, n: int) -> None:
        avail = len(self.buf) - self.pos
        if n <= avail:
            self.pos += n
            return
        self.base += len(self.buf)
        n -= avail
        for chunk in self.chunks:
            if len(chunk) >= n:
                self.buf, self.pos = chunk, n
                return
            self.base += len(chunk)
            n -= len(chunk)
        self.buf, self.pos = b"", 0
        raise self.error("tar stream ends inside a member's data")

    def feed(self, n: int, sink: Callable[[memoryview], object]) -> None:
        """Pass the next ``n`` bytes to ``sink`` without copying them."""
        while True:
            avail = len(self.buf) - self.pos
            take = min(n, avail)
            if take:
                sink(memoryview(self.buf)[self.pos : self.pos + take])
                self.pos += take
                n -= take
            if not n:
                return
            self.base += len(self.buf)
            self.buf, self.pos = next(self.chunks, b""), 0
            if not self.buf:
                raise self.error("tar stream ends inside a member's data")


def _number(field: bytes) -> int:
    """A numeric header field the fast path could not read: base-256, empty, odd padding."""
    if field and field[0] in (0x80, 0xFF):  # GNU base-256: 0x80 positive, 0xff negative
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    if field and field[0] & 0x80:  # no other first byte is a number (GNU tar, tarfile)
        raise ValueError(field)
    text = field.partition(b"\0")[0].strip()
    return int(text, 8) if text else 0


def _fraction_seconds(value: bytes) -> int:
    """A pax time ("1700000000.123456789", "-1.5") as whole seconds, rounded down like timespec."""
    whole, _, fraction = value.partition(b".")
    seconds = int(whole)
    if fraction.strip(b"0") and whole.startswith(b"-"):
        seconds -= 1
    return seconds


def _canonical(raw: bytes) -> str:
    """``entries.normalise`` with a fast path for plain "./usr/bin/x" and "usr/bin/x" names."""
    rest = raw[2:] if raw.startswith(b"./") else raw
    candidate = b"/" + rest.rstrip(b"/")
    probe = candidate + b"/"  # "." and ".." components, wherever they are, show as /./ and /../
    if b"//" not in probe and b"/./" not in probe and b"/../" not in probe and b"\\" not in rest:
        try:
            return candidate.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return normalise(raw)


def _pax_records(
    data: bytes, error: Callable[[str, int], LayerFormatError], offset: int
) -> list[tuple[bytes, bytes]]:
    """Parse "%d %s=%s\\n" records; the length counts the whole record."""
    records = []
    pos = 0
    end = len(data)
    while pos < end and data[pos] != 0:
        space = data.find(b" ", pos, pos + 24)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        equals = data.find(b"=", space, pos + length)
        if length <= 0 or equals < 0 or pos + length > end or data[pos + length - 1] != 0x0A:
            raise error("malformed pax extended header record", offset)
        records.append((data[space + 1 : equals], data[equals + 1 : pos + length - 1]))
        pos += length
    return records


class _TarWalk:
    def __init__(self, blocks: _Blocks, hash_files: bool, content: Content | None) -> None:
        self.blocks = blocks
        self.hash_files = hash_files
        self.content = content
        self.global_pax: dict[bytes, bytes] = {}

    def entries(self) -> Iterator[Entry]:
        blocks = self.blocks
        hash_files = self.hash_files
        content = self.content
        read_files = hash_files or content is not None  # the C fast path hands files back then
        adler32 = zlib.adler32
        types_get = TYPES.get
        pax: dict[bytes, bytes] | None = None
        pax_records: list[tuple[bytes, bytes]] = []
        long_name: bytes | None = None
        long_link: bytes | None = None
        scan = _scan
        global_pax = self.global_pax  # updated in place by "g" headers
        while True:
            # Plain members in C, up to the first one that needs a rule of this loop, which
            # then reads that one. Not between a pax or long-name header and its member.
            pending = pax is not None or long_name is not None or long_link is not None
            if scan is not None and not pending and not global_pax:
                plain: list[Entry] = []
                buf = blocks.ahead()
                blocks.pos = scan(buf, blocks.pos, plain, Entry, SCAN_TYPES, read_files)
                yield from plain
            offset = blocks.offset
            header = blocks.header()
            if header is None:
                return  # EOF at a block boundary without end blocks: GNU tar accepts it too
            if header == ZERO_BLOCK:
                return  # the first zero block ends the archive (GNU tar, tarfile, Go)
            # Header checksum: sum of the bytes with the checksum field read as spaces. adler32
            # gives that sum modulo 65521 in C; exact whenever the header is mostly NULs.
            check_field = header[148:156]
            try:
                expected = int(check_field.partition(b"\0")[0], 8)
            except ValueError:
                raise self._bad_header("unreadable header checksum field", offset) from None
            want = expected - 256 + sum(check_field)
            if not (
                (adler32(header) & 0xFFFF) == (1 + want) % 65521
                and 0 <= want < 65521
                and 255 * (BLOCK - header.count(0)) < 65521
            ):
                self._slow_checksum(header, expected, offset)
            typeflag = header[156]
            try:
                size = int(header[124:136].rstrip(b"\0"), 8)
            except ValueError:
                size = self._field(header[124:136], offset)
            if size < 0:
                raise blocks.error("negative member size", offset)
            if typeflag in PAX_LOCAL or typeflag == PAX_GLOBAL:
                records = _pax_records(self._data(size), blocks.error, offset)
                if typeflag == PAX_GLOBAL:
                    self.global_pax.update(records)
                    continue
                pax = dict(records)
                pax_records = records  # GNU sparse 0.0 repeats its keys: kept in order
                continue
            if typeflag == GNU_LONGNAME:
                long_name = self._data(size).partition(b"\0")[0]
                continue
            if typeflag == GNU_LONGLINK:
                long_link = self._data(size).partition(b"\0")[0]
                continue
            if typeflag == GNU_VOLUME:
                blocks.skip((size + 511) & ~511)  # a volume label names the archive, not a file
                continue

            try:
                mode = int(header[100:108].rstrip(b"\0"), 8)
                uid = int(header[108:116].rstrip(b"\0"), 8)
                gid = int(header[116:124].rstrip(b"\0"), 8)
                mtime = int(header[136:148].rstrip(b"\0"), 8)
            except ValueError:
                mode = self._field(header[100:108], offset)
                uid = self._field(header[108:116], offset)
                gid = self._field(header[116:124], offset)
                mtime = self._field(header[136:148], offset)
            if long_name is not None:
                name = long_name
                long_name = None
            else:
                name = header[:100].partition(b"\0")[0]
                if header[345] and header[257:263] == POSIX_MAGIC:
                    name = header[345:500].partition(b"\0")[0] + b"/" + name
            if long_link is not None:
                link = long_link
                long_link = None
            else:
                link = header[157:257].partition(b"\0")[0]
            entry_type = types_get(typeflag, _FILE)  # unknown types are regular files (GNU tar)
            if typeflag == 0 and name.endswith(b"/"):
                entry_type = _DIR  # v7 tars mark directories only by the trailing slash
            logical_size = size
            sparse_map: list[int] | None = None
            if typeflag == GNU_SPARSE:
                logical_size, sparse_map = self._old_sparse(header, offset)

            if pax is not None or self.global_pax:
                if pax is None:
                    merged = self.global_pax
                else:
                    merged = {**self.global_pax, **pax} if self.global_pax else pax
                pax = None
                sparse_10 = False
                try:
                    if b"mtime" in merged:
                        mtime = _fraction_seconds(merged[b"mtime"])
                    # The common case (containerd, tarfile): a pax header for the times alone.
                    if not merged.keys() <= TIME_KEYS:
                        name = merged.get(b"path", name)
                        link = merged.get(b"linkpath", link)
                        if b"size" in merged:
                            size = logical_size = int(merged[b"size"])
                        if b"uid" in merged:
                            uid = int(merged[b"uid"])
                        if b"gid" in merged:
                            gid = int(merged[b"gid"])
                        # GNU pax sparse formats: the real name and size in GNU.sparse.* keys.
                        name = merged.get(b"GNU.sparse.name", name)
                        if b"GNU.sparse.map" in merged:  # 0.1
                            sparse_map = [int(x) for x in merged[b"GNU.sparse.map"].split(b",")]
                        elif b"GNU.sparse.size" in merged:  # 0.0
                            sparse_map = [int(v) for k, v in pax_records if k in SPARSE_00_KEYS]
                        if b"GNU.sparse.realsize" in merged:  # 1.0
                            logical_size = int(merged[b"GNU.sparse.realsize"])
                        elif b"GNU.sparse.size" in merged:
                            logical_size = int(merged[b"GNU.sparse.size"])
                        sparse_10 = merged.get(b"GNU.sparse.major") == b"1"
                except ValueError:
                    raise blocks.error("bad number in pax extended header", offset) from None
                if sparse_10 and typeflag not in HEADER_ONLY:
                    sparse_map, map_bytes = self._sparse_10_map(offset)
                    size -= map_bytes
            data_size = 0 if typeflag in HEADER_ONLY else size
            if size < 0:
                raise blocks.error("negative member size", offset)

            if len(name) > NAME_MAX or (len(link) > PATH_MAX and entry_type in _LINKS):
                self._check_lengths(name, link if entry_type in _LINKS else b"", offset)
            path = _canonical(name)
            if ".wh." in path or path == "/":
                special = self._special(path, entry_type)
                if special is None:
                    blocks.skip((data_size + 511) & ~511)
                    continue
                path, entry_type = special

            digest = None
            sink = content(path) if content is not None and entry_type is _FILE else None
            if entry_type is _FILE and (hash_files or sink is not None):
                digest = self._file_data(data_size, logical_size, sparse_map, sink)
                blocks.skip(-data_size & 511)
            else:
                blocks.skip((data_size + 511) & ~511)

            if entry_type is _FILE:
                entry_size = logical_size
                target = None
            elif entry_type is _SYMLINK:
                entry_size = 0
                target = path_text(link)  # as written: relative targets are relative to the link
            elif entry_type is _HARDLINK:
                entry_size = 0
                target = _canonical(link)  # names a member of the layer, like any member name
            else:
                entry_size = 0
                target = None
            yield new_entry(
                Entry,
                (path, entry_type, entry_size, mode & 0o7777, uid, gid, mtime, target, digest),
            )

    def _special(self, path: str, entry_type: EntryType) -> tuple[str, EntryType] | None:
        """Whiteouts, AUFS bookkeeping and the root: what a member means, or None to drop it."""
        if path == "/":
            return None  # the root directory member: every layer has it, nobody searches for "/"
        if path.startswith("/.wh..wh.") and path != "/" + OPAQUE_MARKER:
            return None  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): Docker skips it, so do we
        parent, _, base = path.rpartition("/")
        if base == OPAQUE_MARKER:
            return parent or "/", _OPAQUE  # hides the lower layers' contents of its directory
        if base.startswith(WHITEOUT_PREFIX) and len(base) > len(WHITEOUT_PREFIX):
            return parent + "/" + base[len(WHITEOUT_PREFIX) :], _WHITEOUT  # deletes NAME
        return path, entry_type

    def _check_lengths(self, name: bytes, link: bytes, offset: int) -> None:
        """PATH_MAX and NAME_MAX, as the kernel enforces them: what no extraction could create
        is not an image's file, and a name of megabytes would burden every query after."""
        if len(name) > PATH_MAX:
            problem = f"member name of {len(name)} bytes (more than PATH_MAX, {PATH_MAX})"
        elif len(longest := max(name.split(b"/"), key=len)) > NAME_MAX:
            problem = (
                f"member name with a component of {len(longest)} bytes "
                f"(more than NAME_MAX, {NAME_MAX})"
            )
        elif len(link) > PATH_MAX:
            problem = f"link target of {len(link)} bytes (more than PATH_MAX, {PATH_MAX})"
        else:
            return
        shown = repr(name[:80])[2:-1]  # escaped: the name is the image author's choice
        raise self.blocks.error(f"{problem}: {shown}{'...' if len(name) > 80 else ''}", offset)

    def _data(self, size: int) -> bytes:
        if size > SPECIAL_MAX:  # Go's archive/tar has the same limit; a bigger one is an attack
            raise self.blocks.error(f"pax or GNU long-name header of {size} bytes")
        data = self.blocks.read(size)
        self.blocks.skip(-size & 511)
        return data

    def _field(self, field: bytes, offset: int) -> int:
        try:
            return _number(field)
        except ValueError:
            raise self.blocks.error(f"bad numeric header field {field!r}", offset) from None

    def _slow_checksum(self, header: bytes, expected: int, offset: int) -> None:
        unsigned = sum(header[:148]) + 256 + sum(header[156:])
        if expected == unsigned:
            return
        high = sum(1 for b in header[:148] + header[156:] if b >= 0x80)
        if expected == unsigned - 256 * high:  # some old tars summed signed chars
            return
        raise self._bad_header("bad tar header checksum", offset)

    def _bad_header(self, what: str, offset: int) -> LayerFormatError:
        if offset == 0:
            what += " (not a tar archive, or an unknown compression)"
        return self.blocks.error(what, offset)

    def _old_sparse(self, header: bytes, offset: int) -> tuple[int, list[int]]:
        """GNU 'S': a map of (offset, length) in the header, continued in extension blocks."""
        sparse_map: list[int] = []

        def collect(block: bytes, start: int, count: int) -> None:
            for i in range(start, start + 24 * count, 24):
                if block[i : i + 24] == bytes(24):
                    return
                sparse_map.append(self._field(block[i : i + 12], offset))
                sparse_map.append(self._field(block[i + 12 : i + 24], offset))

        collect(header, 386, 4)
        extended = header[482]
        while extended:
            block = self.blocks.read(BLOCK)
            collect(block, 0, 21)
            extended = block[504]
        return self._field(header[483:495], offset), sparse_map

    def _sparse_10_map(self, offset: int) -> tuple[list[int], int]:
        """Pax sparse 1.0: decimal lines at the start of the data, padded to a block."""
        text = self.blocks.read(BLOCK)
        first = text.partition(b"\n")[0]
        if not first.isdigit():
            raise self.blocks.error("bad GNU sparse 1.0 map", offset)
        while text.count(b"\n") < 1 + 2 * int(first):
            text += self.blocks.read(BLOCK)
            if len(text) > SPECIAL_MAX:
                raise self.blocks.error("sparse map too long", offset)
        lines = text.split(b"\n")
        try:
            count = int(lines[0])
            return [int(x) for x in lines[1 : 1 + 2 * count]], len(text)
        except ValueError:
            raise self.blocks.error("bad GNU sparse 1.0 map", offset) from None

    def _file_data(
        self, data_size: int, logical_size: int, sparse_map: list[int] | None, sink: Sink | None
    ) -> str | None:
        """Read a regular file's data: its content (for sparse files the expanded content) to
        ``sink``, and its sha256 when hashing is asked (None when not, or when a sparse file's
        holes are too big to hash)."""
        sha = hashlib.sha256() if self.hash_files else None
        holes = 0 if sparse_map is None else logical_size - sum(sparse_map[1::2])
        if holes > SPARSE_HOLES_HASH_LIMIT:
            sha = None  # hashing that much zero would take minutes: not hashed
        feed = sink if sha is None else sha.update if sink is None else _both(sha.update, sink)
        if feed is None:
            self.blocks.skip(data_size)
        elif sparse_map is None:
            self.blocks.feed(data_size, feed)
        else:
            self._sparse(data_size, logical_size, sparse_map, feed)
        return None if sha is None else "sha256:" + sha.hexdigest()

    def _sparse(self, data_size: int, logical_size: int, sparse_map: list[int], feed: Sink) -> None:
        position = 0
        fed = 0
        for start, length in zip(sparse_map[::2], sparse_map[1::2], strict=True):
            if start < position or fed + length > data_size:
                raise self.blocks.error("sparse map does not match the stored data")
            _feed_zeros(feed, start - position)
            self.blocks.feed(length, feed)
            position, fed = start + length, fed + length
        _feed_zeros(feed, logical_size - position)
        self.blocks.skip(data_size - fed)


def _both(first: Sink, second: Sink) -> Sink:
    def feed(data: memoryview) -> None:
        first(data)
        second(data)

    return feed


def _feed_zeros(feed: Sink, count: int) -> None:
    while count > 0:
        step = min(count, len(_ZEROS))
        feed(_ZEROS[:step])
        count -= step
