"""Big layers decompress in a child process: the same walk, the same errors, nothing left behind."""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path

import pytest
import tarcorpus
from tarcorpus import COMPRESSIONS, compress

from layerindex.entries import Entry
from layerindex.errors import DigestMismatch, LayerFormatError, NetworkError
from layerindex.inflater import CHILD_MIN_BYTES
from layerindex.walker import LayerWalker

WHERE = "image x layer sha256:beef"
CORPUS_SAMPLE = ["gnu", "pax", "pax-non-utf8", "whiteouts", "old-gnu-sparse", "empty"]


def walked(blob: bytes, in_child: bool, **kw: str) -> tuple[list[Entry], tuple[object, ...]]:
    hint = CHILD_MIN_BYTES if in_child else None
    walker = LayerWalker(io.BytesIO(blob), size_hint=hint, where=WHERE, **kw)  # type: ignore[arg-type]
    entries = list(walker)
    seen = (
        walker.compression,
        walker.compressed_size,
        walker.uncompressed_size,
        walker.digest_seen,
        walker.diff_id_seen,
    )
    return entries, seen


def failure(blob: bytes, in_child: bool) -> str:
    with pytest.raises(LayerFormatError) as caught:
        walked(blob, in_child)
    return str(caught.value)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("name", CORPUS_SAMPLE)
def test_child_walk_is_the_thread_walk(name: str, compression: str) -> None:
    blob = compress(tarcorpus.corpus()[name], compression)
    assert walked(blob, in_child=True) == walked(blob, in_child=False)


def test_child_checks_both_digests() -> None:
    tar = tarcorpus.corpus()["gnu"]
    blob = compress(tar, "gzip")
    _entries, seen = walked(blob, in_child=True)
    with pytest.raises(DigestMismatch, match="blob digest mismatch"):
        walked(blob, in_child=True, digest="sha256:" + "1" * 64)
    with pytest.raises(DigestMismatch, match="diff_id mismatch"):
        walked(blob, in_child=True, digest=str(seen[3]), diff_id="sha256:" + "1" * 64)


def damaged() -> dict[str, bytes]:
    gnu = tarcorpus.corpus()["gnu"]
    gzip_blob, zstd_blob = compress(gnu, "gzip"), compress(gnu, "zstd")
    corrupt = bytearray(gzip_blob)
    corrupt[100:110] = b"\xff" * 10
    return {
        "truncated gzip": gzip_blob[: len(gzip_blob) // 2],
        "truncated zstd": zstd_blob[: len(zstd_blob) // 2],
        "corrupt gzip": bytes(corrupt),
        "trailing garbage": gzip_blob + b"garbage",
        "not a tar": random.Random(1).randbytes(5000),
        "cut tar": gnu[:2000],
    }


@pytest.mark.parametrize("name", sorted(damaged()))
def test_child_reports_the_same_format_error(name: str) -> None:
    blob = damaged()[name]
    message = failure(blob, in_child=True)
    assert message == failure(blob, in_child=False)
    assert message.startswith(WHERE + ": ")


class FailingStream(io.BytesIO):
    """A blob download that breaks after its first read."""

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell():
            raise NetworkError("registry.example: connection reset while reading the blob")
        return super().read(size)


def test_a_download_error_is_raised_not_the_truncation_it_causes() -> None:
    blob = compress(tarcorpus.corpus()["gnu"] * 50, "gzip")
    walker = LayerWalker(FailingStream(blob), size_hint=CHILD_MIN_BYTES, where=WHERE)
    with pytest.raises(NetworkError, match="connection reset"):
        list(walker)


def children() -> list[int]:
    """This process's child processes that are decompressing a layer."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"layerindex.inflater" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_an_abandoned_walk_leaves_no_child_behind() -> None:
    size = 24 << 20
    first = tarcorpus.member(b"./small")
    big = tarcorpus.member(b"./random", random.randbytes(size))
    blob = compress(first + big + tarcorpus.END, "gzip")
    entries = iter(LayerWalker(io.BytesIO(blob), size_hint=CHILD_MIN_BYTES))
    assert next(entries).path == "/small"
    assert children()
    entries.close()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not children()
