"""The walker's C fast path (layer/_tarscan.c) against the Python loop it stands in for."""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import tarcorpus
from tarcorpus import checksum, fix_checksum, member

from layerindex.crawl.crawler import Crawler
from layerindex.errors import LayerFormatError
from layerindex.index.database import open_database
from layerindex.index.store import Writer
from layerindex.layer import walker as walker_module
from layerindex.layer.entries import Entry, EntryType
from layerindex.layer.walker import SCAN_TYPES, LayerWalker
from layerindex.registry.client import RegistryClient

scan = walker_module._scan


def walk(blob: bytes, **kw: object) -> list[Entry]:
    return list(LayerWalker(io.BytesIO(blob), **kw))  # type: ignore[arg-type]


def test_fast_path_is_built() -> None:
    assert walker_module.has_fast_path(), (
        "layerindex.layer._tarscan is not built: pip install -e . with a C compiler"
    )


def test_fast_path_refuses_the_pax_headers_python_refuses() -> None:
    from layerindex.layer import _tarscan

    assert _tarscan.SPECIAL_MAX == walker_module.SPECIAL_MAX
    limits = (_tarscan.PATH_MAX, _tarscan.NAME_MAX)
    assert limits == (walker_module.PATH_MAX, walker_module.NAME_MAX)


def scanned(tar: bytes, hash_files: bool = False) -> tuple[list[Entry], int]:
    assert scan is not None
    out: list[Entry] = []
    return out, scan(tar, 0, out, Entry, SCAN_TYPES, hash_files)


def python_walk(tar: bytes, monkeypatch: pytest.MonkeyPatch, **kw: object) -> list[Entry]:
    """The walker without the C fast path: every member read by the Python loop."""
    with monkeypatch.context() as patch:
        patch.setattr(walker_module, "_scan", None)
        return walk(tar, **kw)


def test_plain_members_and_pax_times_and_paths_are_read_in_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = [member(b"./usr/", typeflag=b"5"), member(b"./usr/bin/x", b"#!", mtime=5)]
    members += [pax_times(1), member(b"usr/lib/l", typeflag=b"2", linkname=b"../bin/x")]
    long_name = b"./opt/" + b"long/" * 40 + b"name"
    records = [(b"path", b"./lost"), (b"mtime", b"-1.5"), (b"path", long_name)]
    members += [tarcorpus.pax_member(records), member(b"short", b"data")]
    members += [tarcorpus.pax_member([(b"linkpath", long_name)]), member(b"h", typeflag=b"1")]
    tar = b"".join(members)
    out, end = scanned(tar + tarcorpus.END)
    assert end == len(tar)  # stops at the end blocks: the Python loop ends the archive
    assert out == python_walk(tar + tarcorpus.END, monkeypatch)
    kinds = [EntryType.DIR, EntryType.FILE, EntryType.SYMLINK, EntryType.FILE, EntryType.HARDLINK]
    assert [e.type for e in out] == kinds
    assert out[2].mtime == 1_700_000_001 and type(out[2]) is Entry
    assert (out[3].path, out[3].mtime, out[3].size) == (long_name[1:].decode(), -2, 4)
    assert out[4].link_target == long_name[1:].decode()


@pytest.mark.parametrize(
    ("special", "why"),
    [
        (member(b"./usr/.wh.x"), "whiteout"),
        (member(b"./"), "the root"),
        (member(b"./a//b"), "a name to canonicalise"),
        (member(b"caf\xe9"), "not UTF-8"),
        (member(b"a\\b"), "a backslash"),
        (tarcorpus.pax_member([(b"uid", b"5")]) + member(b"x"), "a pax key not read in C"),
        (member(b"././@LongLink", b"long\0", typeflag=b"L") + member(b"x"), "a GNU long name"),
        (member(b"x", b"data", size=tarcorpus.base256(4, 12)), "a base-256 number"),
        (member(b"x", extra=[(100, b"000064x\0")]), "an unreadable number"),
        (tarcorpus.pax_member([(b"mtimes", b"1")]) + member(b"x"), "a key that is not a time"),
        (member(b"x", typeflag=b"S"), "an old GNU sparse file"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_members_with_a_rule_of_their_own_are_handed_back(special: bytes, why: str) -> None:
    before = member(b"a") + member(b"b", b"data")
    out, end = scanned(before + special + member(b"c") + tarcorpus.END)
    assert (end, [e.path for e in out]) == (len(before), ["/a", "/b"]), why


def test_a_member_whose_data_runs_past_the_buffer_is_handed_back() -> None:
    before = member(b"a")
    out, end = scanned(before + member(b"big", b"x" * 600)[:1024])  # the walker's chunk ends
    assert ([e.path for e in out], end) == (["/a"], len(before))


def test_regular_files_are_handed_back_when_their_content_is_hashed() -> None:
    tar = member(b"d", typeflag=b"5") + member(b"f", b"data") + tarcorpus.END
    out, end = scanned(tar, hash_files=True)
    assert ([e.path for e in out], end) == (["/d"], 512)


def outcome(
    tar: bytes, monkeypatch: pytest.MonkeyPatch, python: bool = False, **kw: object
) -> list[Entry] | str:
    """The entries, or the error's message."""
    try:
        return python_walk(tar, monkeypatch, **kw) if python else walk(tar, **kw)
    except LayerFormatError as exc:
        return str(exc)


def test_fast_path_reads_damaged_tars_as_python_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C reader hands back every member it is unsure of: on headers damaged in the fields
    it reads (numbers, names, checksum, type, pax records), the entries, or the error and its
    offset, are those of the Python loop, byte for byte."""
    rng = random.Random(7)
    tars = [
        tarcorpus.corpus()[name] for name in ("pax", "ustar", "gnu", "v7", "whiteouts", "odd-types")
    ]
    plain = b"".join(
        member(b"./d%d/f" % i, b"x" * (i * 37), mtime=i) + pax_times(i) + member(b"p%d" % i)
        for i in range(20)
    )
    tars.append(plain + tarcorpus.END)
    fields = [(0, 100), (100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156)]
    fields += [(156, 157), (157, 263), (345, 500)]
    tried = 0
    for tar in tars:
        headers = [at for at in range(0, len(tar), 512) if is_header(tar[at : at + 512])]
        pax_data = [at + 512 for at in headers if tar[at + 156] == ord("x")]
        for _ in range(150):
            damaged = bytearray(tar)
            if pax_data and rng.random() < 0.2:  # the records of a pax header
                start, (low, high) = rng.choice(pax_data), (0, 40)
            else:
                start, (low, high) = rng.choice(headers), rng.choice(fields)
            for _ in range(rng.randrange(1, 4)):
                damaged[start + rng.randrange(low, high)] = rng.choice(b"\0\0  /.-789x+_\n=\x80w.h")
            if rng.random() < 0.7:  # keep the checksum right, so the damage reaches the fields
                fix_checksum(damaged, start)
            for hash_files in (False, True):
                expected = outcome(bytes(damaged), monkeypatch, python=True, hash_files=hash_files)
                assert outcome(bytes(damaged), monkeypatch, hash_files=hash_files) == expected
                tried += 1
    assert tried == 2 * 150 * len(tars)


def is_header(block: bytes) -> bool:
    stored = block[148:156].partition(b"\0")[0].strip()
    return len(block) == 512 and stored.isdigit() and int(stored, 8) == checksum(block)


def pax_times(i: int) -> bytes:
    """A pax header of times (containerd), odd ones with a fraction, every third with a path
    (tarfile, Go: names too long for the header)."""
    records = [(b"mtime", b"%d.%d" % (1_700_000_000 + i, i % 3)), (b"atime", b"1")]
    if i % 3 == 0:
        records.append((b"path", b"./pax/%d/" % i + b"n" * 100))
    return tarcorpus.pax_member(records if i % 2 else records[:1])


def test_any_bytes_at_any_offset_are_read_safely() -> None:
    """scan() is handed whatever the blob holds: random blocks, most of them headers, some of
    those damaged (checksums fixed), at offsets inside and outside the buffer."""
    assert scan is not None
    rng = random.Random(11)
    read = 0
    for _ in range(3000):
        blocks = bytearray(rng.randbytes(512 * rng.randrange(1, 5) + rng.randrange(512)))
        for at in range(0, len(blocks) - 511, 512):
            if rng.random() < 0.8:
                parts = rng.choices(
                    ["usr", "bin", "café", ".hidden", "a-b", ""], k=rng.randrange(1, 5)
                )
                name = "/".join(parts).encode()
                size = rng.choice([0, 1, 600, 10**6])
                blocks[at : at + 512] = tarcorpus.header(
                    name, rng.choice([b"0", b"5", b"x"]), size=size
                )
                for _ in range(rng.choice([0, 0, 1, 2])):
                    blocks[at + rng.randrange(512)] = rng.randrange(256)
                fix_checksum(blocks, at)
        start = rng.choice(
            [0, 0, 512, -1, len(blocks), len(blocks) + 1, rng.randrange(len(blocks))]
        )
        out: list[Entry] = []
        end = scan(bytes(blocks), start, out, Entry, SCAN_TYPES, rng.random() < 0.5)
        if not 0 <= start <= len(blocks):
            assert (end, out) == (start, [])
        assert all(type(e) is Entry and e.path.startswith("/") for e in out)
        assert start <= end <= max(start, len(blocks)) and (end - start) % 512 == 0
        read += len(out)
    assert read > 200, read  # the plain members among the noise were read


@pytest.mark.parametrize("built", [True, False])
def test_crawler_says_when_the_fast_path_is_missing(
    built: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not built:
        monkeypatch.setattr(walker_module, "_scan", None)
    engine = open_database(f"sqlite:///{tmp_path / 'index.db'}")
    with caplog.at_level(logging.INFO, logger="layerindex"):
        Crawler(RegistryClient(), Writer(engine))
    engine.dispose()
    said = [r.getMessage() for r in caplog.records if "_tarscan" in r.getMessage()]
    assert len(said) == (0 if built else 1)
    assert built or "reinstall layerindex where a C compiler" in said[0]


@pytest.mark.parametrize("fmt", ["posix", "gnu", "ustar"])
def test_gnu_tar_archives_of_a_real_tree_read_alike(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What GNU tar writes of this repository's own tree (long names, symlinks, hard links,
    non-ASCII and odd names added) reads the same with and without the C reader."""
    tree = tmp_path / "tree"
    shutil.copytree(
        Path(__file__).parent, tree / "tests", ignore=shutil.ignore_patterns("__pycache__")
    )
    deep = tree / ("long-directory-name-" * 4) / ("and-again-" * 8)
    deep.mkdir(parents=True)
    (deep / "café file.txt").write_text("x")
    (tree / "link").symlink_to("tests/conftest.py")
    os.link(tree / "tests" / "conftest.py", tree / "hard")
    tar = tmp_path / "tree.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(tar), "-C", str(tree), "."], check=True)
    blob = tar.read_bytes()
    fast = walk(blob)
    assert len(fast) > 30
    assert fast == python_walk(blob, monkeypatch)
