"""A layer walked in a child process, so that walking and writing run on separate cores.

``LayerWalker``'s per-member work (tar headers, pax records, building entries) is Python and
holds the GIL; in one process it takes turns with the database writer, and threads walking
several layers take turns with each other. The crawler therefore walks every layer of
``CHILD_WALK_MIN_BYTES`` or more (smaller ones cost less than a child's start) as
``python -m layerindex.layer.walkproc``:

- the parent keeps every network concern (tokens, redirects, retries, resumed reads) and pipes
  the blob's compressed bytes, exactly as read, to the child's stdin; no credential crosses;
- the child runs ``LayerWalker`` (both digests are checked there) and appends the entries, in
  marshal frames, to a spool file on disk (one without a name: nothing is left behind, even
  after SIGKILL): memory stays flat in both processes, and the child never waits for the
  database;
- the parent reads the spool as it grows (one layer: written while it is walked) or once the
  child is done (``wait()``: several layers walk at once, and on SQLite only writing them
  takes turns).

The outcome comes last: a ``DONE`` frame, or an ``ERROR`` frame that the parent raises as the
child raised it, so a layer that fails, however late, fails inside the caller's transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import marshal
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import IO, Any, Protocol, cast

from layerindex import errors
from layerindex.errors import LayerIndexError
from layerindex.layer.compression import READ_SIZE, Readable
from layerindex.layer.entries import TYPE_CODES, TYPE_NAMES, Entry, new_entry
from layerindex.layer.walker import LayerWalker

log = logging.getLogger("layerindex")

FRAME = struct.Struct("<cI")  # each frame: its kind and its marshal payload's length
ENTRIES, DONE, ERROR = b"E", b"D", b"X"
FRAME_ENTRIES = 2000  # entries per frame
FOLLOW_POLL = 0.005  # seconds between looks at a spool the child is still writing
STDERR_TAIL = 2000  # characters of a crashed child's stderr quoted in the error
# The child's two threads (inflating, parsing) hand the GIL back and forth hundreds of times a
# layer; at the default 5 ms the inflating one waits most of its time (small-files gzip layer:
# 4.4 s at 5 ms, 3.8 s at 1 ms, 3.55 s at 0.2 ms). The child is ours alone, so we may set it.
CHILD_SWITCH_INTERVAL = 0.0002
PIPE_SIZE = 1 << 20  # the blob's pipe into the child: one READ_SIZE, not 64 KiB
# Leaving a walk early (an error elsewhere, Ctrl-C), how long to wait for the feeding thread: a
# read of a stalled download returns only at the read timeout (60 s), and nothing is left for
# the thread to do (the child is gone, the caller closes the stream), so it is left to end.
STOP_FEED_WAIT = 1.0
# Smaller layers are walked in process: a walker process costs ~0.25 s of CPU to start (an
# image of ten 2 KB layers: 0.84 s in process, 1.55 s with a process each), more than a few
# MB take to walk.
CHILD_WALK_MIN_BYTES = 4 << 20


class ChildWalk:
    """A layer being walked by a child process: what ``Store.index_layer`` needs
    (``WalkedLayer``), read from the spool. The summary attributes are set once the walk has
    ended: after ``wait()`` or a full iteration."""

    compression: str
    compressed_size: int
    uncompressed_size: int

    def __init__(self, walker: LayerWalker, spool: IO[bytes], stderr: IO[bytes]):
        self.where = walker.where
        self.compression = ""
        self.compressed_size = 0
        self.uncompressed_size = 0
        command = [sys.executable, "-m", "layerindex.layer.walkproc", "--where", self.where]
        if walker.digest:
            command += ["--digest", walker.digest]
        if walker.diff_id:
            command += ["--diff-id", walker.diff_id]
        if walker.hash_files:
            command.append("--hash-files")
        self._spool = _SpoolReader(spool)
        self._stderr = stderr
        self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=spool, stderr=stderr)
        assert self._child.stdin is not None
        with contextlib.suppress(AttributeError, OSError):  # Linux only; a cap may refuse it
            fcntl.fcntl(self._child.stdin, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._read_error: BaseException | None = None
        self._pump = threading.Thread(
            target=self._feed, args=(walker,), name="layerindex-walk-feed", daemon=True
        )
        self._pump.start()
        self._outcome: tuple[bytes, Any] | None = None

    def _feed(self, walker: LayerWalker) -> None:
        """Copy the blob into the child; a read error is kept, to be raised in its place."""
        sink = cast(IO[bytes], self._child.stdin)
        try:
            while chunk := walker.stream.read(READ_SIZE):
                sink.write(chunk)
        except BrokenPipeError:
            pass  # the child stopped reading: the layer is bad, and its spool says why
        except BaseException as exc:  # raised by the thread that reads the spool
            self._read_error = exc
        finally:
            with contextlib.suppress(BrokenPipeError):
                sink.close()

    def stop(self) -> None:
        if self._child.poll() is None:  # left early: the child must not outlive us
            self._child.kill()
        self._child.wait()
        self._pump.join(STOP_FEED_WAIT)  # a walk that ended has joined it already

    def wait(self) -> None:
        """Block until the child has walked the whole layer; raise what the walk raised."""
        self._pump.join()
        self._child.wait()
        for _ in self._frames(load=DONE + ERROR):
            pass
        self._conclude()

    def __iter__(self) -> Iterator[Entry]:
        self._spool.seek(0)
        types = TYPE_NAMES
        for batch in self._frames(load=ENTRIES + DONE + ERROR):
            for path, code, size, mode, uid, gid, mtime, link, sha in batch:
                yield new_entry(Entry, (path, types[code], size, mode, uid, gid, mtime, link, sha))
        self._conclude()

    def _frames(self, load: bytes) -> Iterator[list[Any]]:
        """The entry batches (if ``load`` asks for them) as the spool grows, to the outcome."""
        spool = self._spool
        while True:
            exited = self._child.poll() is not None  # before looking: then no more will come
            start = spool.tell()
            header = spool.read(FRAME.size)
            if len(header) == FRAME.size:
                kind, length = FRAME.unpack(header)
                end = start + FRAME.size + length
                if kind not in load:
                    if spool.size() >= end:
                        spool.seek(end)
                        continue
                elif len(payload := spool.read(length)) == length:
                    value = marshal.loads(payload)
                    if kind == ENTRIES:
                        yield cast(list[Any], value)
                        continue
                    self._outcome = (kind, value)
                    return
            if exited:
                return  # the child died before it said how the walk ended
            spool.seek(start)  # a frame the child is still writing
            time.sleep(FOLLOW_POLL)

    def _conclude(self) -> None:
        """Set the summary from the DONE frame, or raise why there is none."""
        self._pump.join()
        if self._read_error is not None:
            raise self._read_error  # a cut download, not what the child made of the bytes it got
        if self._outcome is not None and self._outcome[0] == DONE:
            self.compression, self.compressed_size, self.uncompressed_size = self._outcome[1]
            return
        if self._outcome is not None:
            name, message = self._outcome[1]
            error = getattr(errors, name, LayerIndexError)
            if not (isinstance(error, type) and issubclass(error, LayerIndexError)):
                error = LayerIndexError
            raise error(message)
        returncode = self._child.wait()
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        log.warning("%s: walker process exit code %s:\n%s", self.where, returncode, text)
        raise LayerIndexError(
            f"{self.where}: the layer walker process failed (exit code {returncode}): "
            f"{text[-STDERR_TAIL:] or 'no message'}; the layer will be tried again next run"
        )


class _SpoolReader:
    """The spool, read at an offset of our own (``os.pread``): the child writes through the
    same open file, at the file's offset, which these reads leave alone. The file has no name
    (``tempfile.TemporaryFile``), so nothing is left on disk however the processes end, even by
    SIGKILL; and so it cannot be opened a second time for a separate offset."""

    def __init__(self, spool: IO[bytes]) -> None:
        self._fd = spool.fileno()
        self._offset = 0

    def read(self, size: int) -> bytes:
        data = os.pread(self._fd, size, self._offset)
        self._offset += len(data)
        return data

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int) -> None:
        self._offset = offset

    def size(self) -> int:
        return os.fstat(self._fd).st_size


class Download(Readable, Protocol):
    """A blob being downloaded (the registry client's ``BlobReader``; the walker process
    never loads the HTTP stack): ``abandon()`` ends a read another thread is blocked in."""

    def abandon(self) -> None: ...


@contextlib.contextmanager
def walk_download(
    download: AbstractContextManager[Download],
    *,
    digest: str,
    diff_id: str | None,
    hash_files: bool,
    where: str,
    in_child: bool,
) -> Iterator[LayerWalker | ChildWalk]:
    """A layer's walk over ``download`` (a blob not opened yet): in a child process, or in
    process (a ``LayerWalker``, walked as it is read). Leaving it stops the walk, then closes
    the download; leaving a child walk before the blob's end abandons the download first, so
    that the read its feeding thread may be blocked in (a stalled download) ends at once."""
    with download as stream:
        walker = LayerWalker(
            stream, digest=digest, diff_id=diff_id, hash_files=hash_files, where=where
        )
        if not in_child:
            yield walker
            return
        with walk_in_child(walker) as child:
            try:
                yield child
            finally:
                stream.abandon()  # nothing to do when the blob was read to its end


@contextlib.contextmanager
def walk_in_child(walker: LayerWalker) -> Iterator[ChildWalk]:
    """Start walking ``walker`` (not started) in a child process; on leaving, the child is
    stopped if it still runs and its spool deleted."""
    with (
        tempfile.TemporaryFile(prefix="layerindex-walk-") as spool,
        tempfile.TemporaryFile(prefix="layerindex-walk-") as stderr,
    ):
        walk = ChildWalk(walker, spool, stderr)
        try:
            yield walk
        finally:
            walk.stop()


def _frame(out: IO[bytes], kind: bytes, value: Any) -> None:
    payload = marshal.dumps(value)
    out.write(FRAME.pack(kind, len(payload)))
    out.write(payload)
    out.flush()  # the parent may be following the spool


def main(argv: list[str] | None = None) -> int:
    """The child: compressed layer bytes on stdin, frames on stdout."""
    parser = argparse.ArgumentParser(prog="python -m layerindex.layer.walkproc")
    parser.add_argument("--where", required=True)
    parser.add_argument("--digest")
    parser.add_argument("--diff-id")
    parser.add_argument("--hash-files", action="store_true")
    args = parser.parse_args(argv)
    sys.setswitchinterval(CHILD_SWITCH_INTERVAL)
    out = sys.stdout.buffer
    walker = LayerWalker(
        sys.stdin.buffer,
        digest=args.digest,
        diff_id=args.diff_id,
        hash_files=args.hash_files,
        where=args.where,
    )
    codes = TYPE_CODES
    batch: list[tuple[object, ...]] = []
    try:
        for path, kind, size, mode, uid, gid, mtime, link, sha in walker:
            batch.append((path, codes[kind], size, mode, uid, gid, mtime, link, sha))
            if len(batch) >= FRAME_ENTRIES:
                _frame(out, ENTRIES, batch)
                batch = []
        if batch:
            _frame(out, ENTRIES, batch)
        summary = (walker.compression, walker.compressed_size, walker.uncompressed_size)
        _frame(out, DONE, summary)
    except LayerIndexError as exc:
        _frame(out, ERROR, (type(exc).__name__, str(exc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
