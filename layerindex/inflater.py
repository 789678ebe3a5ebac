"""A big layer's decompression and both digests in a child process, off the parser's GIL.

In one process, the thread that inflates and hashes must take the GIL back after every call
into zlib, ISA-L, zstd or sha256, and the parser holds it most of the time: measured on 2 cores,
the two barely overlap. A child process (``python -m layerindex.inflater WHERE``) has a GIL of
its own: it reads the compressed blob on stdin, writes the tar stream on stdout and, at the end,
one JSON line on stderr with the compression, the blob's size and digest, or the
``LayerFormatError`` message. ``LayerStream`` still does the work, in the child. The parent
feeds the blob from a thread, and reads and hashes the tar stream (the diff_id) in the thread
that parses it: that splits the CPU about evenly between the two processes.

Starting a child costs ~0.1 s of CPU, so only blobs of ``CHILD_MIN_BYTES`` or more use one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, BinaryIO

import layerindex
from layerindex.compression import CHUNK, LayerStream, describe, prefetched
from layerindex.errors import LayerFormatError

CHILD_MIN_BYTES = 16 << 20  # compressed bytes from which a child process pays for itself
PIPE_BYTES = 1 << 20  # pipe buffer asked for (Linux F_SETPIPE_SZ): fewer, bigger reads
READ_AHEAD_CHUNKS = 16  # tar stream read ahead of the parser, in reads of up to CHUNK bytes


class ChildLayerStream:
    """``LayerStream``'s interface, with the work done in a child process."""

    def __init__(self, stream: BinaryIO, where: str = "") -> None:
        self.stream = stream
        self.where = describe(where)
        self.compression = ""
        self.compressed_size = 0
        self.uncompressed_size = 0
        self.digest = ""
        self.diff_id = ""

    def chunks(self) -> Generator[bytes, None, None]:
        """The tar stream in pieces; the attributes are final once it is exhausted. Closing it
        early stops the child and the feeding thread, which never touch the blob after that."""
        package_root = str(Path(layerindex.__file__).resolve().parent.parent)
        python_path = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
        child = subprocess.Popen(
            [sys.executable, "-m", "layerindex.inflater", self.where],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        _widen(child.stdout)
        feed_error: list[BaseException] = []
        feeder = threading.Thread(
            target=self._feed, args=(child.stdin, feed_error), name="layerindex-feed", daemon=True
        )
        feeder.start()
        # Read ahead in a thread: a 1 MiB pipe alone stalls one side whenever the other slows
        # down (dense small files for the parser, big files for the inflater).
        tar_stream = prefetched(_reads(child.stdout), READ_AHEAD_CHUNKS, "layerindex-read")
        try:
            tar_sha256 = hashlib.sha256()  # here, not in the child: it balances the two
            for chunk in tar_stream:
                tar_sha256.update(chunk)
                self.uncompressed_size += len(chunk)
                yield chunk
            self.diff_id = "sha256:" + tar_sha256.hexdigest()
            report = child.stderr.read()
            child.wait()
            feeder.join()
            if feed_error:
                raise feed_error[0]  # the blob could not be read: that, not its truncation
            self._finish(report)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            tar_stream.close()  # the read-ahead thread has met the pipe's end
            feeder.join()
            child.stdout.close()
            child.stderr.close()

    def _feed(self, stdin: IO[bytes], errors: list[BaseException]) -> None:
        try:
            while chunk := self.stream.read(CHUNK):
                stdin.write(chunk)
        except BrokenPipeError:
            pass  # the child ended early: the parent reads why from its report
        except BaseException as exc:  # handed to the parent thread, which raises it
            errors.append(exc)
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def _finish(self, report: bytes) -> None:
        try:
            result = json.loads(report.decode().strip().splitlines()[-1])
        except (ValueError, IndexError, UnicodeDecodeError):
            raise LayerFormatError(
                f"{self.where}: the decompressing child process failed: "
                f"{report.decode(errors='replace').strip()[-500:] or 'no report'}"
            ) from None
        if "error" in result:
            raise LayerFormatError(result["error"])
        self.compression = result["compression"]
        self.compressed_size = result["compressed_size"]
        self.digest = result["digest"]


def _reads(pipe: IO[bytes]) -> Iterator[bytes]:
    fd = pipe.fileno()
    while chunk := os.read(fd, CHUNK):
        yield chunk


if sys.platform == "linux":
    import fcntl

    def _widen(pipe: IO[bytes]) -> None:
        """Ask for a bigger pipe buffer (default 64 KiB): fewer, bigger reads and writes."""
        with contextlib.suppress(OSError):  # refused above /proc/sys/fs/pipe-max-size
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)

else:

    def _widen(pipe: IO[bytes]) -> None:
        """Other systems keep their default pipe buffer."""


def _child(where: str) -> None:
    """The child's side: stdin's blob → stdout's tar stream, then the report on stderr."""
    layer = LayerStream(sys.stdin.buffer, where, hash_tar=False)
    out = sys.stdout.buffer
    _widen(out)
    try:
        for chunk in layer.decoded():
            out.write(chunk)
        out.flush()
        report: dict[str, object] = {
            "compression": layer.compression,
            "compressed_size": layer.compressed_size,
            "digest": layer.digest,
        }
    except LayerFormatError as exc:
        report = {"error": str(exc)}
    except BrokenPipeError:
        return  # the parent stopped reading: nobody wants the report
    sys.stderr.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    _child(sys.argv[1])
