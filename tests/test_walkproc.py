"""A layer walked in a child process gives what the same walk gives in process, errors included."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import tarcorpus
from tarcorpus import compress
from test_store import image

from layerindex.errors import DigestMismatch, LayerFormatError, LayerIndexError, NetworkError
from layerindex.index.database import open_database
from layerindex.index.store import Store
from layerindex.layer.compression import CHUNK
from layerindex.layer.entries import Entry
from layerindex.layer.walker import LayerWalker
from layerindex.layer.walkproc import FRAME_ENTRIES, walk_in_child

WHERE = "image example/app:1 layer sha256:abc"


def walkers(blob: bytes, **kw: Any) -> tuple[LayerWalker, LayerWalker]:
    """Two walkers of the same blob: one to run here, one to hand to a child."""
    return (
        LayerWalker(io.BytesIO(blob), where=WHERE, **kw),
        LayerWalker(io.BytesIO(blob), where=WHERE, **kw),
    )


def big_tar(files: int) -> bytes:
    return (
        b"".join(
            tarcorpus.member(f"d{i % 7}/file{i}".encode(), b"x" * (i % 1000)) for i in range(files)
        )
        + tarcorpus.END
    )


def failure(walker: LayerWalker, how: str) -> Exception:
    """What a child walk raised, waited for or followed to its end; it must raise."""
    try:
        with walk_in_child(walker) as walked:
            if how == "wait":
                walked.wait()
            else:
                list(walked)
    except Exception as exc:
        return exc
    pytest.fail("a bad layer must end in an error")


HOW = pytest.mark.parametrize("how", ["wait", "follow"])


@pytest.mark.parametrize("compression", tarcorpus.COMPRESSIONS)
@pytest.mark.parametrize("name", sorted(tarcorpus.corpus()))
def test_child_walk_gives_the_in_process_walk(name: str, compression: str) -> None:
    blob = compress(tarcorpus.corpus()[name], compression)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    here, there = walkers(blob, digest=digest, hash_files=True)
    expected = list(here)
    with walk_in_child(there) as walked:
        assert list(walked) == expected
        assert list(walked) == expected  # the spool reads again from its start
        assert all(type(e) is Entry for e in walked)
        assert (walked.compression, walked.compressed_size, walked.uncompressed_size) == (
            here.compression,
            here.compressed_size,
            here.uncompressed_size,
        )


def test_many_entries_cross_in_several_frames() -> None:
    tar = big_tar(FRAME_ENTRIES * 2 + 17)
    here, there = walkers(compress(tar, "gzip"))
    expected = list(here)
    with walk_in_child(there) as walked:
        assert list(walked) == expected
    assert len(expected) == FRAME_ENTRIES * 2 + 17


@HOW
def test_a_corrupt_layer_raises_its_error(how: str) -> None:
    blob = compress(big_tar(100), "gzip")
    _, there = walkers(blob[: len(blob) // 2])
    error = failure(there, how)
    assert type(error) is LayerFormatError
    assert str(error).startswith(f"{WHERE}: ") and "truncated" in str(error)


@HOW
def test_a_wrong_digest_raises_its_class_and_message(how: str) -> None:
    blob = compress(big_tar(10), "zstd")
    _, there = walkers(blob, digest="sha256:" + "0" * 64)
    error = failure(there, how)
    assert type(error) is DigestMismatch
    assert str(error).startswith(f"{WHERE}: blob digest mismatch: expected sha256:000")


class CutStream(io.RawIOBase):
    """A download that fails halfway, as BlobStream does once its resumes are spent."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data[: len(data) // 2])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self.data.readinto(buffer)
        if not n:
            raise NetworkError("blob sha256:abc: connection reset after 3 resumes")
        return n


@HOW
def test_a_failed_download_raises_the_download_error_not_the_truncation(how: str) -> None:
    walker = LayerWalker(
        io.BufferedReader(CutStream(compress(big_tar(3000), "gzip"))),
        where=WHERE,
    )
    error = failure(walker, how)
    assert type(error) is NetworkError
    assert str(error) == "blob sha256:abc: connection reset after 3 resumes"


@HOW
def test_a_child_that_dies_is_a_layer_error_with_its_last_words(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'MemoryError: out of memory' >&2\nexit 3\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr("sys.executable", str(python))
    _, there = walkers(compress(big_tar(10), "gzip"))
    error = failure(there, how)
    assert type(error) is LayerIndexError
    assert str(error) == (
        f"{WHERE}: the layer walker process failed (exit code 3): MemoryError: out of memory; "
        "the layer will be tried again next run"
    )


class HeldStream(io.RawIOBase):
    """Gives half of a blob, then holds the rest back until ``release`` is set (10 s at most)."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)
        self.half = len(data) // 2
        self.release = threading.Event()
        self.timed_out = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.data.tell() >= self.half and not self.release.is_set() and not self.timed_out:
            self.timed_out = not self.release.wait(timeout=10)
        limit = self.half - self.data.tell() if self.data.tell() < self.half else len(buffer)
        return self.data.readinto(buffer[: max(1, min(len(buffer), limit))])


def test_entries_are_given_while_the_child_still_walks() -> None:
    # The child reads in CHUNK pieces: the first half must hold several, and a frame's worth.
    blob = (
        b"".join(
            tarcorpus.member(f"file{i}".encode(), bytes(CHUNK // 1000))
            for i in range(3 * FRAME_ENTRIES)
        )
        + tarcorpus.END
    )
    assert len(blob) // 2 > 3 * CHUNK
    held = HeldStream(blob)
    walker = LayerWalker(io.BufferedReader(held, 4096), where=WHERE)
    expected = list(LayerWalker(io.BytesIO(blob)))
    got = []
    with walk_in_child(walker) as walked:
        for entry in walked:
            got.append(entry)
            held.release.set()  # only now may the second half of the blob flow
    assert not held.timed_out
    assert got == expected
    assert walked.compressed_size == len(blob)


@contextlib.contextmanager
def stalled_download(first: bytes = b"") -> Iterator[BinaryIO]:
    """A blob stream that gives ``first`` and then nothing, as a registry that stops sending:
    its read returns only when the stream ends, which is after 20 s (a read timeout, sooner)
    or on leaving the block."""
    read_end, write_end = os.pipe()
    stalled = os.fdopen(read_end, "rb")
    os.write(write_end, first)
    ending = threading.Lock()

    def end_the_read() -> None:  # and with it the thread reading
        with ending:
            if not stalled.closed:
                os.close(write_end)
                stalled.close()

    timeout = threading.Timer(20, end_the_read)
    timeout.start()
    try:
        yield stalled
    finally:
        timeout.cancel()
        end_the_read()


def test_leaving_a_walk_whose_download_stalls_does_not_wait_for_the_read() -> None:
    # Ctrl-C while the registry sends nothing: the read would return only at its timeout.
    with stalled_download() as stalled:
        walker = LayerWalker(stalled, where=WHERE)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt), walk_in_child(walker):
            raise KeyboardInterrupt
        assert time.monotonic() - started < 10


def test_ctrl_c_while_a_download_stalls_leaves_the_layer_at_once(tmp_path: Path) -> None:
    # What `layerindex index` does with one big layer: its rows written while the child walks.
    # The registry sends nothing more; Ctrl-C must not wait for the read's timeout.
    store = Store(open_database(f"sqlite:///{tmp_path / 'index.db'}"))
    _image_id, (state,) = store.record_image(image("sha256:i1", ["sha256:l0"]))
    ctrl_c = threading.Timer(
        0.5, signal.pthread_kill, [threading.main_thread().ident, signal.SIGINT]
    )
    with stalled_download(tarcorpus.member(b"file0", b"x")) as stalled:
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.start()
            with walk_in_child(LayerWalker(stalled, where=WHERE)) as walked:
                store.index_layer(state, walked)
        assert time.monotonic() - started < 10
    assert not store.layer_indexed(state)  # and nothing of it was kept
    store.engine.dispose()
