"""Odd tar archives built in code, for the walker tests (no binary blobs in the repository).

``corpus()`` gives name → uncompressed tar bytes. Archives ``tarfile`` can write are written
with it (USTAR, PAX, GNU formats); the rest (v7, GNU old sparse, pax sparse 0.0, base-256
numbers, unknown typeflags, header-only types with a size) from hand-made 512-byte headers.
"""

from __future__ import annotations

import gzip
import io
import itertools
import tarfile
from collections.abc import Iterable

import zstandard

BLOCK = 512
END = bytes(2 * BLOCK)
SURROGATE = "utf-8"


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def base256(value: int, width: int) -> bytes:
    if value < 0:
        return bytes([0xFF]) + (value + (1 << (8 * width - 8))).to_bytes(width - 1, "big")
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def header(
    name: bytes,
    typeflag: bytes = b"0",
    *,
    size: int | bytes = 0,
    mode: int = 0o644,
    uid: int | bytes = 0,
    gid: int | bytes = 0,
    mtime: int | bytes = 1_700_000_000,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    extra: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """One 512-byte header; numeric fields given as bytes are written as they are."""

    def num(value: int | bytes, width: int) -> bytes:
        return value if isinstance(value, bytes) else octal(value, width)

    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:108] = octal(mode, 8)
    block[108:116] = num(uid, 8)
    block[116:124] = num(gid, 8)
    block[124:136] = num(size, 12)
    block[136:148] = num(mtime, 12)
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    block[257 : 257 + len(magic)] = magic
    block[345 : 345 + len(prefix)] = prefix
    for offset, value in extra:
        block[offset : offset + len(value)] = value
    fix_checksum(block)
    return bytes(block)


def checksum(block: bytes | bytearray) -> int:
    """A header's checksum: the sum of its bytes, the checksum field's read as spaces."""
    return sum(block[:148]) + 8 * 32 + sum(block[156:512])


def fix_checksum(tar: bytearray, start: int = 0) -> None:
    """Write into the header at ``start`` its checksum."""
    tar[start + 148 : start + 156] = b"%06o\0 " % checksum(tar[start : start + 512])


def member(name: bytes, data: bytes = b"", typeflag: bytes = b"0", **fields: object) -> bytes:
    fields.setdefault("size", len(data))
    return header(name, typeflag, **fields) + pad(data)  # type: ignore[arg-type]


def pax_records(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for key, value in records:
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def pax_member(records: Iterable[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    return member(b"./PaxHeaders/x", pax_records(records), typeflag)


def with_tarfile(
    fmt: int, infos: list[tuple[tarfile.TarInfo, bytes]], end: bool = True, **kw: object
) -> bytes:
    """A tar written by tarfile; without ``end``, cut right after the last member's data."""
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape", **kw
    ) as archive:  # type: ignore[call-overload]
        for member_info, data in infos:
            member_info.size = len(data) if member_info.isreg() else 0
            archive.addfile(member_info, io.BytesIO(data) if member_info.isreg() else None)
        body_end = archive.offset
    return out.getvalue() if end else out.getvalue()[:body_end]


def info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    member_info = tarfile.TarInfo(name)
    member_info.type = kind
    member_info.mtime = 1_700_000_000
    member_info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(member_info, key, value)
    return member_info


def everyday_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    """Members of every type, named with and without "./", as image builders write them."""
    return [
        (info("./", tarfile.DIRTYPE), b""),
        (info("./etc/", tarfile.DIRTYPE), b""),
        (info("./etc/hostname"), b"box\n"),
        (info("etc/empty"), b""),
        (info("usr/bin/tool", mode=0o4755, uid=1000, gid=50), b"\x7fELF" + bytes(700)),
        (info("./usr/bin/sh", tarfile.SYMTYPE, linkname="../../bin/busybox"), b""),
        (info("./usr/bin/tool2", tarfile.LNKTYPE, linkname="./usr/bin/tool"), b""),
        (info("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
        (info("./dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), b""),
        (info("./run/fifo", tarfile.FIFOTYPE), b""),
        (info("./opt/contiguous", tarfile.CONTTYPE), b"contiguous data"),
        (info("./etc/.wh.motd"), b""),
        (info("./var/cache/.wh..wh..opq"), b""),
        (info("./var/cache/kept"), b"written before or after the opaque marker"),
        (info("./etc/hostname"), b"box, second version\n"),  # a duplicate: the later wins
        (info("./sticky", tarfile.DIRTYPE, mode=0o1777), b""),
    ]


def long_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    deep = "./" + "/".join(f"directory{i:02d}" for i in range(12))  # > 100, < 255 bytes
    deeper = "./" + "/".join(f"d{i:03d}" * 10 for i in range(10))  # > 255 bytes
    return [
        (info(deep + "/file.txt"), b"long"),
        (info(deeper + "/file.txt"), b"longer"),
        (info(deep + "/link", tarfile.SYMTYPE, linkname="/" + "t" * 150), b""),
        (info(deep + "/hard", tarfile.LNKTYPE, linkname=deeper[2:] + "/file.txt"), b""),
        (info("./naïve/日本語.txt"), b"utf-8 text"),
        (info("./weird name with spaces/and\\backslash"), b""),
    ]


def non_utf8_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    raw = b"./latin1/caf\xe9.txt".decode(SURROGATE, "surrogateescape")
    return [(info(raw), b"latin-1 name"), (info("./bad\udcff/dir/", tarfile.DIRTYPE), b"")]


def v7_archive() -> bytes:
    """Old v7 headers: no magic, directories only marked by the trailing slash."""
    return (
        member(b"v7dir/", typeflag=b"\0", magic=b"")
        + member(b"v7dir/file", b"v7 data", typeflag=b"\0", magic=b"")
        + member(b"v7dir/hard", typeflag=b"1", linkname=b"v7dir/file", magic=b"")
        + END
    )


def base256_archive() -> bytes:
    """GNU base-256 numbers: a big uid/gid, a negative mtime and a size written in binary."""
    return (
        member(
            b"./big-ids",
            b"binary size",
            magic=b"ustar  \x00",
            size=base256(11, 12),
            uid=base256(3_000_000_000, 8),
            gid=base256(2**40, 8),
            mtime=base256(-86_400, 12),
        )
        + END
    )


def odd_types_archive() -> bytes:
    """Unknown typeflags carry data like files; a symlink's size field carries none."""
    return (
        member(b"./unknown-type", b"data of an unknown type", typeflag=b"Z")
        + header(b"./link-with-size", b"2", size=BLOCK, linkname=b"target")
        + member(b"./after-link", b"read as a header, not as the link's data")
        + END
    )


def go_issue12435_header() -> bytes:
    """The header of Go's archive/tar testdata/issue12435.tar, as its issue (golang/go#12435)
    gives the bytes: no name, base-256 mode, uid and gid, a checksum field of a NUL and zeros,
    which Go (trimming NULs) and tarfile (cutting at the NUL) both read as 0 and which matches
    the header's signed sum (the last byte is chosen so). GNU tar, Go and tarfile refuse it."""
    block = bytearray(BLOCK)
    block[100:120] = b"\xff\x01\x00\x00\x00\x00\x00\x00" * 2 + b"\xff\x01\x00\x00"
    block[122:125] = b"\t\xbf\x97"
    block[148:157] = b"\x0000000000"
    block[157:162] = "KǸ".encode() + b"\xd4\x03"
    signed = 8 * 32 + sum(b - 256 if b >= 128 else b for b in block[:148] + block[156:])
    block[511] = -signed % 256  # signed sum 0: the checksum Go 1.5 accepted
    return bytes(block)


def old_gnu_sparse_archive(segments: int = 30) -> tuple[bytes, bytes]:
    """GNU 'S' member with more segments than fit in the header (extension blocks).

    Returns the archive and the expanded file content.
    """
    realsize = segments * 4096 + 1000
    spans = [(i * 4096 + 1024, 100) for i in range(segments)]
    content = bytearray(realsize)
    stored = b""
    for n, (start, length) in enumerate(spans):
        chunk = bytes([65 + n % 26]) * length
        content[start : start + length] = chunk
        stored += chunk

    def slots(part: list[tuple[int, int]]) -> bytes:
        return b"".join(octal(s, 12) + octal(n, 12) for s, n in part)

    first, rest = spans[:4], spans[4:]
    extension_blocks = []
    while rest:
        part, rest = rest[:21], rest[21:]
        block = bytearray(BLOCK)
        block[: 24 * len(part)] = slots(part)
        block[504] = 1 if rest else 0
        extension_blocks.append(bytes(block))
    head = header(
        b"./sparse-old",
        b"S",
        size=len(stored),
        magic=b"ustar  \x00",
        extra=[(386, slots(first)), (482, b"\x01"), (483, octal(realsize, 12))],
    )
    return head + b"".join(extension_blocks) + pad(stored) + END, bytes(content)


def pax_sparse_archives() -> dict[str, tuple[bytes, bytes]]:
    """Pax sparse 0.0, 0.1 and 1.0 as GNU tar writes them, with the expanded content."""
    spans = [(0, 10), (5000, 20), (9000, 5)]
    realsize = 12000
    content = bytearray(realsize)
    stored = b""
    for start, length in spans:
        content[start : start + length] = b"s" * length
        stored += b"s" * length
    flat = [x for span in spans for x in span]
    v00 = [(b"GNU.sparse.size", b"%d" % realsize), (b"GNU.sparse.numblocks", b"3")]
    for start, length in spans:
        v00 += [(b"GNU.sparse.offset", b"%d" % start), (b"GNU.sparse.numbytes", b"%d" % length)]
    v01 = [
        (b"GNU.sparse.size", b"%d" % realsize),
        (b"GNU.sparse.numblocks", b"3"),
        (b"GNU.sparse.name", b"sparse-01"),
        (b"GNU.sparse.map", b",".join(b"%d" % x for x in flat)),
    ]
    v10 = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", b"sparse-10"),
        (b"GNU.sparse.realsize", b"%d" % realsize),
    ]
    map_text = pad(b"3\n" + b"".join(b"%d\n" % x for x in flat))
    expanded = bytes(content)
    return {
        "pax-sparse-0.0": (pax_member(v00) + member(b"sparse-00", stored) + END, expanded),
        "pax-sparse-0.1": (
            pax_member(v01) + member(b"./GNUSparseFile.1/sparse-01", stored) + END,
            expanded,
        ),
        "pax-sparse-1.0": (
            pax_member(v10) + member(b"./GNUSparseFile.1/sparse-10", map_text + stored) + END,
            expanded,
        ),
    }


def pax_archive() -> bytes:
    """PAX: long names, big ids, fractional and negative mtimes, a global header."""
    members = [
        *long_members(),
        (info("./big-uid", uid=2**33, gid=2**22), b""),
        (info("./fraction", mtime=1_700_000_000.75), b""),
        (info("./before-epoch", mtime=-1.5), b""),
        (info("./with-pax-size"), b"x" * 1500),
    ]
    return with_tarfile(tarfile.PAX_FORMAT, members, pax_headers={"comment": "global"})


def whiteout_archive() -> bytes:
    return with_tarfile(
        tarfile.PAX_FORMAT,
        [
            (info(".wh..wh..opq"), b""),
            (info("./a/b/.wh..wh..opq"), b""),
            (info("./a/.wh.gone"), b""),
            (info("./a/.wh..hidden"), b""),
            (info("./.wh..wh.plnk/", tarfile.DIRTYPE), b""),
            (info("./.wh..wh.plnk/123.456"), b"aufs hard link store"),
            (info("./.wh..wh.aufs"), b""),
            (info("./a/.wh."), b"not a whiteout: no name"),
        ],
    )


def corpus() -> dict[str, bytes]:
    """name → uncompressed tar; every one of them readable by tarfile."""
    everyday = everyday_members()
    archives = {
        "ustar": with_tarfile(tarfile.USTAR_FORMAT, everyday + long_members()[:1]),
        "gnu": with_tarfile(tarfile.GNU_FORMAT, everyday + long_members() + non_utf8_members()),
        "pax": pax_archive(),
        "pax-non-utf8": with_tarfile(tarfile.PAX_FORMAT, non_utf8_members()),
        "whiteouts": whiteout_archive(),
        "v7": v7_archive(),
        "base256": base256_archive(),
        "odd-types": odd_types_archive(),
        "old-gnu-sparse": old_gnu_sparse_archive()[0],
        "empty": END,
    }
    archives.update({name: blob for name, (blob, _) in pax_sparse_archives().items()})
    plain = with_tarfile(tarfile.GNU_FORMAT, everyday)
    archives["trailing-garbage"] = plain + b"garbage after the end blocks" * 40
    body = with_tarfile(tarfile.GNU_FORMAT, everyday, end=False)
    archives["no-end-blocks"] = body
    archives["one-end-block"] = body + bytes(BLOCK)
    return archives


def gzip_blob(tar: bytes, members: int = 1) -> bytes:
    """``members`` gzip members, concatenated (like pigz -i or a resumed upload)."""
    cut = [len(tar) * i // members for i in range(members + 1)]
    return b"".join(gzip.compress(tar[a:b], 6, mtime=0) for a, b in itertools.pairwise(cut))


def zstd_blob(tar: bytes, frames: int = 1, skippable: bool = False) -> bytes:
    cut = [len(tar) * i // frames for i in range(frames + 1)]
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    out = [compressor.compress(tar[a:b]) for a, b in itertools.pairwise(cut)]
    if skippable:
        out.insert(1, b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"skip!")
    return b"".join(out)


def compress(tar: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip_blob(tar)
    if compression == "zstd":
        return zstd_blob(tar)
    return tar


COMPRESSIONS = ("gzip", "zstd", "tar")
