"""LayerWalker against ``gzip -dc | tar -tv`` and friends. Run by hand:

    python benchmarks/walker_bench.py [--repeats 3] [--big-mb 500]

Builds, in a temporary directory, a many-small-files layer from this Python's stdlib and
site-packages (files over 256 KiB left out) compressed with gzip (zlib level 6) and zstd (level 3),
times LayerWalker (counting entries, no database; with its C fast path and without it, where
layerindex.layer._tarscan is built) against GNU tar listing the same blob, alternating, and reports
the peak RSS of walking a big (~500 MB) layer in a child process.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

from layerindex.layer import walker as walker_module
from layerindex.layer.walker import LayerWalker

FAST_SCAN = walker_module._scan  # None where layerindex.layer._tarscan was not built

SMALL_FILE_MAX = 256 << 10


def build_small_files_tar(path: Path) -> int:
    stdlib, purelib = Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])
    roots = [stdlib] if purelib.is_relative_to(stdlib) else [stdlib, purelib]
    count = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for root in roots:
            for directory, dirnames, filenames in os.walk(root):
                dirnames.sort()
                archive.add(directory, arcname="./" + directory.lstrip("/"), recursive=False)
                count += 1
                for name in sorted(filenames):
                    full = os.path.join(directory, name)
                    if os.path.islink(full) or os.path.getsize(full) <= SMALL_FILE_MAX:
                        archive.add(full, arcname="./" + full.lstrip("/"), recursive=False)
                        count += 1
    return count


def compress_gzip(source: Path, target: Path, level: int) -> None:
    with (
        source.open("rb") as src,
        target.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as dst,
    ):
        while chunk := src.read(1 << 20):
            dst.write(chunk)


def compress_zstd(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst)


def walk_count(blob: Path) -> int:
    with blob.open("rb") as stream:
        return sum(1 for _ in LayerWalker(stream))


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def walking(blob: Path, fast: bool) -> Callable[[], object]:
    def run() -> object:
        walker_module._scan = FAST_SCAN if fast else None
        try:
            return walk_count(blob)
        finally:
            walker_module._scan = FAST_SCAN

    return run


def shell(command: str) -> Callable[[], object]:
    return lambda: subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)


def peak_rss_mib(blob: Path) -> tuple[float, float]:
    """(peak RSS walking ``blob``, peak RSS of the same child only importing) in MiB.

    Read from VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a child forked
    from this (big) benchmark process would report the parent's peak.
    """
    code = (
        "import sys\n"
        "from layerindex.layer.walker import LayerWalker\n"
        "if sys.argv[1] != '-':\n"
        "    with open(sys.argv[1], 'rb') as s:\n"
        "        sum(1 for _ in LayerWalker(s, hash_files=True))\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
    )
    walked = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True)
    idle = subprocess.run([sys.executable, "-c", code, "-"], capture_output=True, text=True)
    walked.check_returncode()
    return int(walked.stdout) / 1024, int(idle.stdout) / 1024


def build_big_tar(path: Path, megabytes: int) -> None:
    """A few random-data files plus one file of zeros (compresses ~1000:1 or more)."""
    work = path.parent / "big-src"
    work.mkdir()
    per_file = megabytes // 5
    for i in range(4):
        with (work / f"random{i}.bin").open("wb") as out:
            for _ in range(per_file):
                out.write(os.urandom(1 << 20))
    with (work / "zeros.bin").open("wb") as out:
        for _ in range(per_file):
            out.write(bytes(1 << 20))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(work, arcname=".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="walker-bench-") as tmp:
        work = Path(tmp)
        tar = work / "small.tar"
        entries = build_small_files_tar(tar)
        compress_gzip(tar, work / "small.tar.gz", 6)
        compress_zstd(tar, work / "small.tar.zst")
        gz, zst = work / "small.tar.gz", work / "small.tar.zst"
        counted = walk_count(gz)
        print(f"many-small-files layer: {entries} members, walker yields {counted} entries")
        cases: list[tuple[str, Path, str]] = [
            ("tar", tar, f"tar -tvf {tar}"),
            ("gzip", gz, f"gzip -dc {gz} | tar -tv"),
            ("gzip", gz, f"tar -tvzf {gz}"),
            ("zstd", zst, f"zstd -dc {zst} | tar -tv"),
        ]
        walkers = [("LayerWalker", True), ("LayerWalker, pure Python", False)]
        if FAST_SCAN is None:
            print("layerindex.layer._tarscan is not built: the pure-Python walker only")
            walkers = walkers[1:]
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for _, blob, command in cases:
                for name, fast in walkers:
                    key = f"{name} {blob.name}"
                    times.setdefault(key, []).append(timed(walking(blob, fast)))
                times.setdefault(command, []).append(timed(shell(command)))
        header = f"{'case':44} {'MB':>7} {'median s':>9} {'vs tar':>7} {'entries/s':>10}"
        print(header)
        print("-" * len(header))
        for compression, blob, command in cases:
            tool = statistics.median(times[command])
            megabytes = blob.stat().st_size / 1e6
            print(
                f"{command[:44]:44} {megabytes:7.1f} {tool:9.3f} {1.0:7.2f} {entries / tool:10.0f}"
            )
            for name, _ in walkers:
                mine = statistics.median(times[f"{name} {blob.name}"])
                label = f"{name} ({compression})"
                print(
                    f"{label:44} {megabytes:7.1f} {mine:9.3f} {mine / tool:7.2f} "
                    f"{counted / mine:10.0f}"
                )

        big = work / "big.tar"
        build_big_tar(big, args.big_mb)
        compress_gzip(big, work / "big.tar.gz", 1)
        compress_zstd(big, work / "big.tar.zst")
        print(f"\npeak RSS walking a {big.stat().st_size / 1e6:.0f} MB layer (hash_files=True):")
        for blob in (big, work / "big.tar.gz", work / "big.tar.zst"):
            walked, idle = peak_rss_mib(blob)
            size = blob.stat().st_size / 1e6
            note = f"(a child only importing: {idle:.1f} MiB)"
            print(f"  {blob.name:14} {size:7.0f} MB  {walked:6.1f} MiB  {note}")


if __name__ == "__main__":
    main()
