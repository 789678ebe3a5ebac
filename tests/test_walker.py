"""The layer walker: compressed bytes → entries, checked against Python's tarfile."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import itertools
import math
import random
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tarcorpus
from tarcorpus import COMPRESSIONS, compress, info, member, with_tarfile

from layerindex.errors import DigestMismatch, LayerFormatError
from layerindex.layer import compression as compression_module
from layerindex.layer import walker as walker_module
from layerindex.layer.compression import (
    CHUNK,
    QUEUE_CHUNKS,
    ZSTD_BLOCK_MAX,
    LayerStream,
    prefetched,
)
from layerindex.layer.entries import (
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    Entry,
    EntryType,
    normalise,
    path_bytes,
    path_text,
)
from layerindex.layer.walker import LayerWalker, _canonical

TARFILE_TYPES = {
    tarfile.REGTYPE: EntryType.FILE,
    tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE,
    tarfile.GNUTYPE_SPARSE: EntryType.FILE,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.FIFOTYPE: EntryType.FIFO,
}

Row = tuple[str, EntryType, int, int, int, int, int, str | None]


@pytest.fixture(autouse=True, params=["c", "python"])
def member_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: with the C fast path for plain members, and without it (the
    pure-Python walker, as installed where no C compiler was found)."""
    if request.param == "c":
        assert walker_module.has_fast_path(), (
            "layerindex.layer._tarscan is not built: run pip install -e . on a machine with a C "
            "compiler"
        )
    else:
        monkeypatch.setattr(walker_module, "_scan", None)
    return str(request.param)


@functools.cache
def corpus() -> dict[str, bytes]:
    return tarcorpus.corpus()


def walk(blob: bytes, **kw: object) -> list[Entry]:
    return list(LayerWalker(io.BytesIO(blob), **kw))  # type: ignore[arg-type]


def rows(entries: list[Entry]) -> list[Row]:
    return [(e.path, e.type, e.size, e.mode, e.uid, e.gid, e.mtime, e.link_target) for e in entries]


def tarfile_rows(tar: bytes) -> list[Row]:
    """What tarfile reads, through the walker's documented path and whiteout rules."""
    out: list[Row] = []
    with tarfile.open(
        fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape"
    ) as archive:
        for m in archive:
            path = normalise(m.name.encode("utf-8", "surrogateescape"))
            kind = TARFILE_TYPES.get(m.type, EntryType.FILE)
            link_raw = m.linkname.encode("utf-8", "surrogateescape")
            target = {
                EntryType.SYMLINK: path_text(link_raw),
                EntryType.HARDLINK: normalise(link_raw),
            }.get(kind)
            size = m.size if kind is EntryType.FILE else 0
            base = path.rpartition("/")[2]
            if path == "/" or (path.startswith("/.wh..wh.") and base != OPAQUE_MARKER):
                continue
            if base == OPAQUE_MARKER:
                path, kind, size, target = path.rpartition("/")[0] or "/", EntryType.OPAQUE, 0, None
            elif base.startswith(WHITEOUT_PREFIX) and base != WHITEOUT_PREFIX:
                path = path.rpartition("/")[0] + "/" + base[len(WHITEOUT_PREFIX) :]
                kind, size, target = EntryType.WHITEOUT, 0, None
            out.append(
                (path, kind, size, m.mode & 0o7777, m.uid, m.gid, math.floor(m.mtime), target)
            )
    return out


# --- the central test -----------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("name", sorted(tarcorpus.corpus()))
def test_walker_matches_tarfile(name: str, compression: str) -> None:
    tar = corpus()[name]
    walker = LayerWalker(io.BytesIO(compress(tar, compression)))
    entries = list(walker)
    assert rows(entries) == tarfile_rows(tar)
    assert walker.compression == compression
    assert walker.uncompressed_size == len(tar)
    assert walker.diff_id_seen == "sha256:" + hashlib.sha256(tar).hexdigest()


def test_corpus_is_not_trivial() -> None:
    kinds = {e.type for tar in corpus().values() for e in walk(tar)}
    assert kinds == set(EntryType)


# --- path rules, one test each ----------------------------------------------------------------


def one(*members: bytes) -> list[Entry]:
    return walk(b"".join(members) + tarcorpus.END)


def test_rule_dot_slash_and_bare_names_are_the_same_path() -> None:
    entries = one(member(b"./usr/bin/x"), member(b"usr/bin/y"), member(b"/usr/bin/z"))
    assert [e.path for e in entries] == ["/usr/bin/x", "/usr/bin/y", "/usr/bin/z"]


def test_rule_directory_trailing_slash_is_dropped() -> None:
    assert [e.path for e in one(member(b"./usr/lib/", typeflag=b"5"))] == ["/usr/lib"]


def test_rule_dotdot_cannot_climb_above_root() -> None:
    assert [e.path for e in one(member(b"../../etc/passwd"), member(b"a/./b/../c"))] == [
        "/etc/passwd",
        "/a/c",
    ]


def test_rule_root_directory_member_is_dropped() -> None:
    entries = one(member(b"./", typeflag=b"5"), member(b"/", typeflag=b"5"), member(b"./x"))
    assert [e.path for e in entries] == ["/x"]


def test_rule_whiteout_deletes_its_name() -> None:
    (entry,) = one(member(b"./etc/.wh.motd"))
    assert (entry.path, entry.type, entry.size, entry.link_target) == (
        "/etc/motd",
        EntryType.WHITEOUT,
        0,
        None,
    )


def test_rule_whiteout_of_a_dotfile() -> None:
    (entry,) = one(member(b"home/u/.wh..bashrc"))
    assert (entry.path, entry.type) == ("/home/u/.bashrc", EntryType.WHITEOUT)


def test_rule_opaque_marker_marks_its_directory() -> None:
    (entry,) = one(member(b"./var/cache/.wh..wh..opq"))
    assert (entry.path, entry.type, entry.size) == ("/var/cache", EntryType.OPAQUE, 0)


def test_rule_opaque_marker_at_the_root_marks_the_root() -> None:
    (entry,) = one(member(b".wh..wh..opq"))
    assert (entry.path, entry.type) == ("/", EntryType.OPAQUE)


def test_rule_opaque_marker_keeps_files_of_the_same_layer() -> None:
    # moby#17819: files added in the same layer, before the marker, survive; we yield all.
    entries = one(member(b"d/kept", b"x"), member(b"d/.wh..wh..opq"), member(b"d/later"))
    assert [(e.path, e.type) for e in entries] == [
        ("/d/kept", EntryType.FILE),
        ("/d", EntryType.OPAQUE),
        ("/d/later", EntryType.FILE),
    ]


def test_rule_aufs_metadata_is_dropped() -> None:
    entries = one(
        member(b"./.wh..wh.plnk/", typeflag=b"5"),
        member(b"./.wh..wh.plnk/1.2", b"data"),
        member(b"./.wh..wh.aufs"),
        member(b"./kept"),
    )
    assert [e.path for e in entries] == ["/kept"]


def test_rule_bare_whiteout_prefix_is_an_ordinary_file() -> None:
    (entry,) = one(member(b"./a/.wh.", b"x"))
    assert (entry.path, entry.type, entry.size) == ("/a/.wh.", EntryType.FILE, 1)


def test_rule_duplicate_path_is_yielded_twice_in_order() -> None:
    entries = one(member(b"./f", b"first"), member(b"f", b"second!"))
    assert [(e.path, e.size) for e in entries] == [("/f", 5), ("/f", 7)]


def test_rule_symlink_target_is_kept_as_written() -> None:
    (entry,) = one(member(b"./bin/sh", typeflag=b"2", linkname=b"../usr//bin/./busybox"))
    assert (entry.type, entry.link_target, entry.size) == (
        EntryType.SYMLINK,
        "../usr//bin/./busybox",
        0,
    )


def test_rule_hardlink_target_is_a_canonical_path() -> None:
    (entry,) = one(member(b"./bin/b", typeflag=b"1", linkname=b"./bin//a"))
    assert (entry.type, entry.link_target) == (EntryType.HARDLINK, "/bin/a")


def test_rule_non_utf8_name_round_trips() -> None:
    raw = b"./caf\xe9/\xff\xfe.txt"
    (entry,) = one(member(raw, b"x"))
    assert entry.path == "/caf\\xe9/\\xff\\xfe.txt"
    assert path_bytes(entry.path) == raw[1:]


def test_rule_backslash_in_a_name_is_escaped() -> None:
    (entry,) = one(member(b"./a\\b"))
    assert entry.path == "/a\\\\b"
    assert path_bytes(entry.path) == b"/a\\b"


def test_rule_mode_keeps_only_permission_and_setid_bits() -> None:
    (entry,) = one(member(b"./x", mode=0o104755))
    assert entry.mode == 0o4755


def test_rule_v7_directory_is_marked_by_trailing_slash() -> None:
    (entry,) = one(member(b"dir/", typeflag=b"\0", magic=b""))
    assert (entry.path, entry.type) == ("/dir", EntryType.DIR)


def test_rule_unknown_typeflag_is_a_regular_file() -> None:
    entries = one(member(b"./u", b"12345", typeflag=b"Z"), member(b"./next"))
    assert [(e.path, e.type, e.size) for e in entries] == [
        ("/u", EntryType.FILE, 5),
        ("/next", EntryType.FILE, 0),
    ]


def test_rule_header_only_types_carry_no_data_whatever_their_size() -> None:
    # Go's archive/tar and tarfile (what Docker and containerd use) ignore the size of links,
    # devices, directories and fifos: the next block is the next header.
    link = tarcorpus.header(b"./l", b"2", size=1024, linkname=b"t")
    entries = one(link, member(b"./next", b"n"))
    assert [(e.path, e.size) for e in entries] == [("/l", 0), ("/next", 1)]


def test_rule_gnu_volume_label_is_not_a_file() -> None:
    entries = one(member(b"my label", typeflag=b"V", magic=b"ustar  \x00"), member(b"./f"))
    assert [e.path for e in entries] == ["/f"]


def test_rule_ustar_prefix_field_is_joined() -> None:
    (entry,) = one(member(b"file", prefix=b"./very/long/prefix"))
    assert entry.path == "/very/long/prefix/file"


def test_rule_gnu_magic_ignores_the_prefix_area() -> None:
    # GNU format keeps atime/ctime there in incremental mode: never part of the name.
    (entry,) = one(member(b"file", magic=b"ustar  \x00", prefix=b"14621472344\x00"))
    assert entry.path == "/file"


def test_rule_pax_mtime_fraction_rounds_down() -> None:
    tar = with_tarfile(
        tarfile.PAX_FORMAT, [(info("./a", mtime=10.9), b""), (info("./b", mtime=-1.5), b"")]
    )
    assert [e.mtime for e in walk(tar)] == [10, -2]


def test_rule_pax_header_of_times_only_sets_mtime() -> None:
    # containerd writes a pax header with the times on every member: the walker's fast path.
    times = [(b"atime", b"5.5"), (b"mtime", b"1700000000.75"), (b"ctime", b"6")]
    (entry,) = one(tarcorpus.pax_member(times), member(b"./a", b"xy", mtime=1))
    assert (entry.path, entry.size, entry.mtime) == ("/a", 2, 1700000000)
    (entry,) = one(tarcorpus.pax_member([(b"atime", b"5")]), member(b"./a", mtime=7))
    assert entry.mtime == 7  # no mtime record: the header's


def test_bad_pax_mtime_is_a_format_error() -> None:
    with pytest.raises(LayerFormatError, match="bad number in pax extended header"):
        one(tarcorpus.pax_member([(b"mtime", b"soon")]), member(b"./a"))


def test_rule_pax_global_header_applies_to_later_members() -> None:
    tar = with_tarfile(
        tarfile.PAX_FORMAT, [(info("./a"), b""), (info("./b"), b"")], pax_headers={"uid": "4242"}
    )
    assert [e.uid for e in walk(tar)] == [4242, 4242]


def test_rule_base256_numbers() -> None:
    (entry,) = walk(corpus()["base256"])
    assert (entry.size, entry.uid, entry.gid, entry.mtime) == (11, 3_000_000_000, 2**40, -86_400)


def test_canonical_fast_path_matches_normalise() -> None:
    names = [
        b"",
        b".",
        b"./",
        b"..",
        b"./a",
        b"a",
        b"a/",
        b"a//b",
        b"/a",
        b"//a",
        b"./.a",
        b"a/.b/c",
        b"a/./b",
        b"a/../b",
        b"a/b/..",
        b"./a\\b",
        b"caf\xe9",
        b"\xc3\xa9t\xc3\xa9/",
        b"a/...",
        b"...",
        b"./-/x",
    ]
    rng = random.Random(7)
    alphabet = [b"a", b"/", b".", b"\\", b"\xe9", b"\xc3\xa9", b"-"]
    names += [b"".join(rng.choice(alphabet) for _ in range(rng.randrange(8))) for _ in range(3000)]
    for name in names:
        assert _canonical(name) == normalise(name), name


# --- compression --------------------------------------------------------------------------------


def everyday() -> bytes:
    return corpus()["gnu"]


def test_plain_tar_is_detected_without_magic() -> None:
    walker = LayerWalker(io.BytesIO(everyday()))
    assert len(list(walker)) == len(tarfile_rows(everyday()))
    assert walker.compression == "tar"


@pytest.fixture(params=["isal", "zlib"])
def gzip_inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The gzip tests run with isal's IgzipDecompressor and with the zlib fallback."""
    if request.param == "zlib":
        monkeypatch.setattr(compression_module, "_new_inflater", compression_module._ZlibMember)
    return str(request.param)


@pytest.mark.usefixtures("gzip_inflater")
def test_multi_member_gzip() -> None:
    blob = tarcorpus.gzip_blob(everyday(), members=7)
    walker = LayerWalker(io.BytesIO(blob))
    assert rows(list(walker)) == tarfile_rows(everyday())
    assert walker.compression == "gzip"
    assert walker.compressed_size == len(blob)


@pytest.mark.usefixtures("gzip_inflater")
@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK])
def test_gzip_output_ending_on_a_chunk_boundary_is_whole(size: int) -> None:
    # Zeros inflate in long copies: output capped at CHUNK may leave more inside the decoder.
    blob = gzip.compress(bytes(size), mtime=0)
    layer = LayerStream(io.BytesIO(blob))
    assert b"".join(layer.chunks()) == bytes(size)
    assert layer.uncompressed_size == size


@pytest.mark.usefixtures("gzip_inflater")
def test_gzip_zero_padding_after_the_last_member() -> None:
    blob = tarcorpus.gzip_blob(everyday()) + bytes(1000)
    walker = LayerWalker(io.BytesIO(blob))
    assert len(list(walker)) == len(tarfile_rows(everyday()))
    assert walker.digest_seen == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_multi_frame_zstd_with_a_skippable_frame() -> None:
    blob = tarcorpus.zstd_blob(everyday(), frames=5, skippable=True)
    walker = LayerWalker(io.BytesIO(blob))
    assert rows(list(walker)) == tarfile_rows(everyday())
    assert walker.compression == "zstd"


def test_zstd_bomb_stays_in_chunks() -> None:
    # 256 MiB of zeros compress to a few KiB; the walker must not inflate it in one call.
    zeros = 256 << 20
    tar = member(b"./zeros", typeflag=b"0", size=zeros) + bytes(zeros) + tarcorpus.END
    blob = tarcorpus.zstd_blob(tar)
    assert len(blob) < 64 * 1024
    stream = LayerStream(io.BytesIO(blob))
    sizes = [len(chunk) for chunk in stream.chunks()]
    assert sum(sizes) == len(tar)
    assert max(sizes) <= CHUNK + ZSTD_BLOCK_MAX  # a group of blocks passes CHUNK by one at most


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_digests_are_reported(compression: str) -> None:
    blob = compress(everyday(), compression)
    walker = LayerWalker(io.BytesIO(blob))
    list(walker)
    assert walker.digest_seen == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert walker.diff_id_seen == "sha256:" + hashlib.sha256(everyday()).hexdigest()
    assert (walker.compressed_size, walker.uncompressed_size) == (len(blob), len(everyday()))


def test_matching_digests_pass() -> None:
    blob = tarcorpus.gzip_blob(everyday())
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(everyday()).hexdigest()
    assert walk(blob, digest=digest, diff_id=diff_id)


def test_digest_mismatch_names_where_expected_and_actual() -> None:
    blob = tarcorpus.gzip_blob(everyday())
    wrong = "sha256:" + "0" * 64
    walker = LayerWalker(io.BytesIO(blob), digest=wrong, where="image alpine:3.20 layer sha256:ab")
    seen: list[Entry] = []
    with pytest.raises(DigestMismatch) as caught:
        seen.extend(walker)
    message = str(caught.value)
    assert "image alpine:3.20 layer sha256:ab" in message
    assert wrong in message and hashlib.sha256(blob).hexdigest() in message
    assert len(seen) == len(tarfile_rows(everyday()))  # raised instead of StopIteration


def test_diff_id_mismatch_says_it_is_the_uncompressed_diff_id() -> None:
    blob = tarcorpus.zstd_blob(everyday())
    wrong = "sha256:" + "1" * 64
    with pytest.raises(DigestMismatch, match=r"img layer x: uncompressed diff_id .*1111"):
        walk(blob, diff_id=wrong, where="img layer x")


# --- corrupt input: always LayerFormatError, naming where and the offset ---------------------


def assert_format_error(blob: bytes, *fragments: str) -> None:
    with pytest.raises(LayerFormatError) as caught:
        walk(blob, where="image x layer sha256:beef")
    message = str(caught.value)
    assert message.startswith("image x layer sha256:beef: ")
    assert "offset" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.usefixtures("gzip_inflater")
def test_truncated_gzip() -> None:
    blob = tarcorpus.gzip_blob(everyday())
    assert_format_error(blob[: len(blob) // 2], "truncated gzip")


def test_truncated_zstd() -> None:
    blob = tarcorpus.zstd_blob(everyday())
    assert_format_error(blob[: len(blob) // 2], "truncated zstd")


@pytest.mark.usefixtures("gzip_inflater")
def test_corrupt_gzip() -> None:
    blob = bytearray(tarcorpus.gzip_blob(everyday()))
    blob[100:110] = b"\xff" * 10
    assert_format_error(bytes(blob), "corrupt gzip stream")


@pytest.mark.usefixtures("gzip_inflater")
def test_gzip_member_with_a_wrong_crc() -> None:
    blob = bytearray(tarcorpus.gzip_blob(everyday()))
    blob[-8] ^= 0xFF  # the member trailer: CRC32, then ISIZE
    assert_format_error(bytes(blob), "corrupt gzip stream")


def test_corrupt_zstd() -> None:
    blob = bytearray(tarcorpus.zstd_blob(everyday()))
    blob[100:110] = b"\xff" * 10
    assert_format_error(bytes(blob))


@pytest.mark.usefixtures("gzip_inflater")
def test_gzip_trailing_garbage() -> None:
    assert_format_error(tarcorpus.gzip_blob(everyday()) + b"garbage", "trailing garbage")


def test_tar_cut_inside_a_header() -> None:
    tar = member(b"./a") + member(b"./b") + tarcorpus.END
    assert_format_error(tar[: 512 + 100], "inside a header", "offset 512")


def test_tar_cut_inside_file_data() -> None:
    tar = member(b"./f", b"x" * 5000) + tarcorpus.END
    assert_format_error(tar[:2048], "inside a member's data")


def test_bad_header_checksum() -> None:
    tar = bytearray(member(b"./a", b"a") + member(b"./b", b"b") + tarcorpus.END)
    tar[1024 + 10] ^= 0x01
    assert_format_error(bytes(tar), "checksum", "1024")


def test_a_block_that_is_not_zero_and_fails_its_checksum_is_an_error_not_the_end() -> None:
    """Only an all-zero block ends the archive (GNU tar, Go, tarfile); a header whose checksum
    does not add up is an error, at the start of a layer and after members alike, with the
    checksum field read up to its first NUL (a NUL first: unreadable)."""
    go_header = tarcorpus.go_issue12435_header()
    for at, tar in [(0, b""), (1024, member(b"./a", b"data"))]:
        assert_format_error(tar + go_header + tarcorpus.END, "header checksum", f"offset {at}")
        assert_format_error(tar + go_header, "header checksum", f"offset {at}")
    # Its size field, base-256 for Go but neither 0x80 (positive) nor 0xff (negative) first:
    # GNU tar and tarfile refuse it, and so does the walker, instead of reading a size of 0.
    odd_base256 = member(b"./x", size=b"\x97" + bytes(11))
    assert_format_error(odd_base256 + tarcorpus.END, "bad numeric header field", "offset 0")
    assert [e.path for e in one(member(b"./a"))] == ["/a"]  # the end blocks end it
    lone_zero_block = member(b"./a") + bytes(tarcorpus.BLOCK) + member(b"./after-the-end")
    assert [e.path for e in walk(lone_zero_block)] == ["/a"]  # as GNU tar and tarfile


def test_garbage_is_not_a_tar() -> None:
    assert_format_error(random.Random(1).randbytes(5000), "not a tar archive")


def test_malformed_pax_record() -> None:
    tar = member(b"./PaxHeaders/a", b"99 path=x\n", typeflag=b"x") + member(b"a") + tarcorpus.END
    assert_format_error(tar, "pax")


def test_names_and_link_targets_longer_than_the_kernel_allows_fail_the_layer() -> None:
    """PATH_MAX 4096 and NAME_MAX 255 (Linux): the error names the layer and shows the start of
    the name escaped; at the limits the member is read."""
    limit = b"./" + b"/".join([b"d" * 255] * 15) + b"/" + b"f" * 254  # 4096 bytes in all
    assert len(limit) == walker_module.PATH_MAX
    at_limits = [tarcorpus.pax_member([(b"path", limit)]) + member(b"x", b"data")]
    at_limits.append(tarcorpus.pax_member([(b"linkpath", b"t" * 4096)]) + symlink_member(b"s"))
    assert [len(e.path) for e in one(*at_limits)] == [4095, 2]
    too_long = [
        (b"]0;" + b"a/" * 2100, "member name of 4204 bytes (more than PATH_MAX, 4096)"),
        (b"etc/" + b"n" * 256, "a component of 256 bytes (more than NAME_MAX, 255)"),
    ]
    for name, problem in too_long:
        tar = tarcorpus.pax_member([(b"path", name)]) + member(b"x") + tarcorpus.END
        shown = repr(name[:80])[2:-1]
        header_at = len(tar) - len(member(b"x") + tarcorpus.END)  # the member's, after its pax
        assert_format_error(tar, f"{problem}: {shown}... at tar offset {header_at}")
    long_target = tarcorpus.pax_member([(b"linkpath", b"t" * 4097)]) + symlink_member(b"s")
    assert_format_error(long_target + tarcorpus.END, "link target of 4097 bytes", ": s at")
    # A GNU long name says the same.
    gnu = member(b"././@LongLink", b"x" * 5000 + b"\0", typeflag=b"L") + member(b"short")
    assert_format_error(gnu + tarcorpus.END, "member name of 5000 bytes")


def symlink_member(name: bytes) -> bytes:
    return member(name, typeflag=b"2", linkname=b"short-target")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_random_damage_raises_only_layer_format_error(compression: str) -> None:
    rng = random.Random(compression)
    blob = compress(corpus()["pax"] + corpus()["old-gnu-sparse"], compression)
    for _ in range(150):
        damaged = bytearray(blob)
        if rng.random() < 0.5:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            for _ in range(rng.randrange(1, 6)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        with contextlib.suppress(LayerFormatError):  # any other exception fails the test
            walk(bytes(damaged))


# --- hashing and sparse files ---------------------------------------------------------------


def test_hash_files_gives_each_regular_files_sha256() -> None:
    tar = with_tarfile(
        tarfile.PAX_FORMAT,
        [
            (info("./a"), b"hello"),
            (info("./empty"), b""),
            (info("./big"), random.Random(3).randbytes(3 << 20)),
            (info("./d", tarfile.DIRTYPE), b""),
            (info("./.wh.gone"), b"ignored"),
        ],
    )
    expected = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for m in archive:
            if m.isfile() and ".wh." not in m.name:
                data = archive.extractfile(m).read()  # type: ignore[union-attr]
                expected[normalise(m.name.encode())] = "sha256:" + hashlib.sha256(data).hexdigest()
    for compression in COMPRESSIONS:
        entries = walk(compress(tar, compression), hash_files=True)
        assert {e.path: e.sha256 for e in entries if e.sha256} == expected
        assert {e.path for e in entries if not e.sha256} == {"/d", "/gone"}
    assert all(e.sha256 is None for e in walk(tar))


def test_hash_of_sparse_files_is_of_the_expanded_content() -> None:
    archives = dict(tarcorpus.pax_sparse_archives())
    archives["old-gnu-sparse"] = tarcorpus.old_gnu_sparse_archive()
    for name, (tar, content) in archives.items():
        (entry,) = walk(tar, hash_files=True)
        assert entry.size == len(content), name
        assert entry.sha256 == "sha256:" + hashlib.sha256(content).hexdigest(), name


def test_content_hands_out_the_chosen_files_bytes_before_its_entry() -> None:
    """``content``: for each regular file (whiteouts and non-files never asked) a sink or None;
    a sink gets the bytes, sparse holes expanded, before the entry comes out of the walk."""
    sparse, expanded = tarcorpus.old_gnu_sparse_archive()
    tar = b"".join(
        [
            member(b"./etc/conf", b"first copy"),
            member(b"./etc/.wh.gone"),
            member(b"./etc", typeflag=b"5"),
            member(b"./etc/conf", b"second copy, the one a container sees"),
            sparse[: -len(tarcorpus.END)],
        ]
    )
    asked: list[str] = []
    got: list[tuple[str, bytes]] = []

    def content(path: str) -> Callable[[memoryview], object] | None:
        asked.append(path)
        got.append((path, b""))

        def sink(data: memoryview) -> None:
            got[-1] = (path, got[-1][1] + bytes(data))

        return sink

    for entry in LayerWalker(io.BytesIO(tar + tarcorpus.END), content=content):
        if entry.type is EntryType.FILE:  # its content was handed out already
            assert (got[-1][0], len(got[-1][1])) == (entry.path, entry.size)
    assert asked == ["/etc/conf", "/etc/conf", "/sparse-old"]
    assert [data for _, data in got] == [
        b"first copy",
        b"second copy, the one a container sees",
        expanded,
    ]


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_gnu_tar_sparse_file_of_ten_gib(tmp_path: Path, fmt: str) -> None:
    assert shutil.which("tar")
    sparse = tmp_path / "big"
    with sparse.open("wb") as out:
        out.seek(5 << 30)
        out.write(b"middle")
        out.truncate(10 << 30)
    tar = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", str(tar), "-C", str(tmp_path), "big"],
        check=True,
    )
    (entry,) = walk(tar.read_bytes(), hash_files=True)
    assert (entry.path, entry.type, entry.size) == ("/big", EntryType.FILE, 10 << 30)
    assert entry.sha256 is None  # 10 GiB of holes: over the hashing limit, documented


def test_gnu_tar_small_sparse_file_hash(tmp_path: Path) -> None:
    sparse = tmp_path / "small"
    with sparse.open("wb") as out:
        out.seek(3 << 20)
        out.write(b"in the middle")
        out.truncate(8 << 20)
    for version in ("0.0", "0.1", "1.0"):
        tar = tmp_path / f"s{version}.tar"
        options = ["--sparse", "--format=pax", f"--sparse-version={version}"]
        subprocess.run(["tar", *options, "-cf", str(tar), "-C", str(tmp_path), "small"], check=True)
        (entry,) = walk(tar.read_bytes(), hash_files=True)
        assert entry.size == 8 << 20, version
        assert entry.sha256 == "sha256:" + hashlib.sha256(sparse.read_bytes()).hexdigest()


def test_walker_reads_once() -> None:
    walker = LayerWalker(io.BytesIO(everyday()))
    list(walker)
    with pytest.raises(RuntimeError):
        list(walker)


# --- the background threads (decompression, and the walk behind Store.index_layer) ---------------


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Every walk, finished, failed or abandoned, has stopped its threads when it returns."""
    yield
    assert not [t for t in threading.enumerate() if t.name.startswith("layerindex-")]


class CountingReads(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        return super().read(size)


def test_abandoned_walk_stops_reading_the_blob() -> None:
    # Random bytes (the blob is as big as the tar), more than the most the walk reads ahead.
    read_ahead = (QUEUE_CHUNKS + 3) * CHUNK  # queued, being put, being parsed, being inflated
    size = read_ahead + (8 << 20)
    first = member(b"./small", typeflag=b"0", size=0)
    big = member(b"./random", typeflag=b"0", size=size) + random.randbytes(size)
    stream = CountingReads(gzip.compress(first + big + tarcorpus.END, compresslevel=1, mtime=0))
    entries = iter(LayerWalker(stream))
    assert next(entries).path == "/small"
    entries.close()  # type: ignore[attr-defined]
    reads = stream.reads
    time.sleep(0.05)
    assert stream.reads == reads  # nothing reads the stream after close(): the caller may close it
    assert stream.tell() <= read_ahead < len(stream.getvalue())  # bounded, not the whole blob


def test_prefetched_raises_the_producers_error_in_the_consumer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise LayerFormatError("layer: corrupt")

    got: list[int] = []
    with pytest.raises(LayerFormatError, match="corrupt"):
        got.extend(prefetched(source(), 1))
    assert got == [1]


def test_closing_prefetched_closes_its_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.set()

    items = prefetched(source(), 2)
    assert next(items) == 0
    items.close()
    assert closed.is_set()
