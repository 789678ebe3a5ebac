"""``layerindex index`` against ``tar -tv`` on the same layer blobs, through a real registry.

    python benchmarks/index_bench.py                      # full run, a few minutes on 2 cores
    python benchmarks/index_bench.py --big-mb 100 --huge-mb 0 --repeats 3   # quick

Builds, in a temporary directory:

- a many-small-files layer: this Python's stdlib and site-packages (files over 256 KiB left out),
  tens of thousands of entries;
- a big-binaries layer: ``--big-mb`` MB in files of about 50 MB cut from this machine's own
  executables and shared libraries (real machine code compresses like real images do);
- each as gzip (level 6, what Docker writes), zstd (level 3) and plain tar;
- a ``--huge-mb`` layer (gzip) for a peak-RSS run, and a three-layer image.

pushes each as an image to a real ``docker-registry`` on loopback (tests/registry_server.py),
then, alternating within each repeat, times ``layerindex index`` (a CLI subprocess, a new
database each run: SQLite, or PostgreSQL with ``--postgres URL``) against GNU tar listing the
same blob from disk. Prints medians, the ratio to tar, entries/s, peak RSS (VmHWM of the
layerindex process plus that of its largest walker child, each read inside the process as it
exits through a ``sitecustomize`` put on PYTHONPATH: getrusage would report this benchmark's own
peak, which Linux carries across exec) and database bytes per entry (database size after the
run minus an empty database's, over the
entries).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from installed import cli_env  # noqa: E402
from registry_server import RegistryServer, start_plain  # noqa: E402
from walker_bench import build_small_files_tar  # noqa: E402

from layerindex.index.database import libpq_url  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "tar": "application/vnd.oci.image.layer.v1.tar",
}
BINARY_DIRS = ("/usr/lib", "/usr/bin", "/usr/libexec", "/usr/local/lib", sys.prefix)
POOL_BYTES = 96 << 20  # distinct machine code cycled into the big files (> any zstd window)
BIG_FILE_MB = 50

# Put on PYTHONPATH as sitecustomize.py: every Python process of a run (the CLI and its walker
# children) writes its VmHWM (kB) to $BENCH_HWM_DIR/<pid> on the way out.
HWM_SITECUSTOMIZE = """
import atexit, os
def _hwm():
    status = open('/proc/self/status').read()
    with open(os.path.join(os.environ['BENCH_HWM_DIR'], str(os.getpid())), 'w') as out:
        out.write(status.split('VmHWM:')[1].split()[0])
if os.environ.get('BENCH_HWM_DIR'):
    atexit.register(_hwm)
"""


# --- building layers ------------------------------------------------------------------------------


@dataclass
class Blob:
    path: Path
    compression: str  # gzip | zstd | tar
    digest: str
    diff_id: str

    @property
    def megabytes(self) -> float:
        return self.path.stat().st_size / 1e6


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def compressed(tar: Path, compression: str, level: int | None = None) -> Blob:
    """``tar`` as a gzip / zstd / plain blob next to it."""
    diff_id = sha256_file(tar)
    if compression == "tar":
        return Blob(tar, "tar", diff_id, diff_id)
    target = tar.with_name(tar.name + (".gz" if compression == "gzip" else ".zst"))
    if target.exists():  # built by an earlier run with --keep
        return Blob(target, compression, sha256_file(target), diff_id)
    with tar.open("rb") as source, target.open("wb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level or 6, mtime=0) as out:
                shutil.copyfileobj(source, out, 1 << 20)
        else:
            zstandard.ZstdCompressor(level=level or 3).copy_stream(source, raw)
    return Blob(target, compression, sha256_file(target), diff_id)


def binary_pool() -> bytes:
    """Up to POOL_BYTES of this machine's ELF files, to cut big 'binaries' from."""
    parts: list[bytes] = []
    have = 0
    seen: set[tuple[int, int]] = set()
    for root in BINARY_DIRS:
        for directory, _dirs, files in sorted(os.walk(root)):
            for name in sorted(files):
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                    if stat.st_size < 64 << 10 or (stat.st_dev, stat.st_ino) in seen:
                        continue
                    seen.add((stat.st_dev, stat.st_ino))
                    with open(path, "rb") as source:
                        data = source.read(16 << 20)
                except OSError:
                    continue
                if data.startswith(b"\x7fELF"):
                    parts.append(data)
                    have += len(data)
                    if have >= POOL_BYTES:
                        return b"".join(parts)
    if not parts:
        raise SystemExit("no ELF files found to build the big-binaries layer from")
    return b"".join(parts)


def build_big_tar(path: Path, megabytes: int, pool: bytes, seed: int = 0) -> int:
    """A layer of ~50 MB 'binaries' (machine code from ``pool``) under ./opt/big/."""
    count = max(1, round(megabytes / BIG_FILE_MB))
    per_file = (megabytes << 20) // count
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("./opt", "./opt/big"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            archive.addfile(info)
        for i in range(count):
            info = tarfile.TarInfo(f"./opt/big/binary-{seed}-{i}")
            info.size, info.mode, info.mtime = per_file, 0o755, 1700000000
            start = (seed * 7919 + i * 1_000_003) % len(pool)
            archive.addfile(info, _Cycle(pool, start, per_file))
    return count + 2


class _Cycle:
    """A file object reading ``size`` bytes of ``pool`` from ``start``, wrapping around."""

    def __init__(self, pool: bytes, start: int, size: int) -> None:
        self.pool, self.pos, self.left = memoryview(pool), start, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self.pool) - self.pos)
            out += self.pool[self.pos : self.pos + take]
            self.pos = (self.pos + take) % len(self.pool)
        self.left -= n
        return bytes(out)


def build_prefixed_copy(source: Path, target: Path, prefix: str) -> None:
    """The same members as ``source`` under ``./<prefix>/``: a distinct layer, same shape."""
    with tarfile.open(source) as src, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            member.name = f"./{prefix}/" + member.name.removeprefix("./")
            if member.islnk():
                member.linkname = f"./{prefix}/" + member.linkname.removeprefix("./")
            dst.addfile(member, data)


# --- the registry ---------------------------------------------------------------------------------


def push_image(server: RegistryServer, repo: str, tag: str, blobs: list[Blob]) -> str:
    """An OCI image of ``blobs``, pushed as ``repo:tag``; returns the reference to index."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
            "history": [{"created_by": f"benchmark layer {i}"} for i in range(len(blobs))],
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    for blob in blobs:
        server.push_blob(repo, blob.path.read_bytes(), blob.digest)
    server.push_blob(repo, config, config_digest)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {
                    "mediaType": OCI_LAYER[b.compression],
                    "digest": b.digest,
                    "size": b.path.stat().st_size,
                }
                for b in blobs
            ],
        }
    ).encode()
    response = server.push_raw_manifest(repo, tag, manifest, OCI_MANIFEST)
    assert response.status_code == 201, response.text
    return f"{server.host}/{repo}:{tag}"


# --- running ---------------------------------------------------------------------------------


@dataclass
class IndexRun:
    seconds: float
    entries: int
    peak_rss_mib: float
    db_bytes: int


class SqliteDatabases:
    """A new SQLite file per run."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def create(self, name: str) -> str:
        return f"sqlite:///{self.work / name}.db"

    def entries_and_bytes(self, url: str) -> tuple[int, int]:
        db = Path(url.removeprefix("sqlite:///"))
        with sqlite3.connect(db) as connection:
            (entries,) = connection.execute(ENTRY_COUNT).fetchone()
        connection.close()
        return entries, _db_size(db)

    def drop(self, url: str) -> None:
        db = Path(url.removeprefix("sqlite:///"))
        for path in db.parent.glob(db.name + "*"):
            path.unlink()


class PostgresDatabases:
    """A new PostgreSQL database per run on the server at ``server_url`` (no database name)."""

    def __init__(self, server_url: str) -> None:
        import psycopg

        self.server_url = server_url.rstrip("/")
        plain = libpq_url(self.server_url)
        self.admin = psycopg.connect(f"{plain}/postgres", autocommit=True)

    def create(self, name: str) -> str:
        self.admin.execute(f"DROP DATABASE IF EXISTS {name}")
        self.admin.execute(f"CREATE DATABASE {name}")
        return f"{self.server_url}/{name}"

    def entries_and_bytes(self, url: str) -> tuple[int, int]:
        import psycopg

        name = url.rsplit("/", 1)[1]
        plain = libpq_url(url)
        with psycopg.connect(plain) as connection:
            (entries,) = connection.execute(ENTRY_COUNT).fetchone() or (0,)
        (size,) = self.admin.execute("SELECT pg_database_size(%s)", (name,)).fetchone() or (0,)
        return int(entries), int(size)

    def drop(self, url: str) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]}")


ENTRY_COUNT = "SELECT COALESCE(SUM(entry_count), 0) FROM diffs"


class Runner:
    def __init__(self, work: Path, databases: SqliteDatabases | PostgresDatabases) -> None:
        self.work = work
        self.databases = databases
        self.runs = 0
        self.env = cli_env(work / "pycache")
        empty = databases.create("layerindex_bench_empty")
        # Made as `index` makes a new database (on SQLite from the head statements: `db upgrade`
        # runs the migrations, and 0007's copy of entries leaves free pages in the file).
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import layerindex.index.database as d; d.open_database({empty!r})",
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.empty_db_bytes = databases.entries_and_bytes(empty)[1]
        databases.drop(empty)
        self.site = work / "hwm-site"
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(HWM_SITECUSTOMIZE)

    def index(self, ref: str) -> IndexRun:
        """``layerindex index ref`` into a database that is new and empty."""
        self.runs += 1
        url = self.databases.create(f"layerindex_bench_{self.runs}")
        hwm = self.work / "hwm.d"
        shutil.rmtree(hwm, ignore_errors=True)
        hwm.mkdir()
        path = os.pathsep.join(filter(None, [str(self.site), os.environ.get("PYTHONPATH")]))
        env = {**self.env, "BENCH_HWM_DIR": str(hwm), "PYTHONPATH": path}
        command = [sys.executable, "-m", "layerindex", "--db", url, "index", ref]
        start = time.perf_counter()
        done = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = done.communicate()
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"layerindex index {ref} failed:\n{out.decode()}{err.decode()}")
        peaks = {int(f.name): int(f.read_text()) / 1024 for f in hwm.iterdir()}
        cli = peaks.pop(done.pid)
        # The CLI and its largest walker child: an upper bound of one layer's peak together.
        peak = cli + max(peaks.values(), default=0)
        entries, size = self.databases.entries_and_bytes(url)
        self.databases.drop(url)
        return IndexRun(seconds, entries, peak, size - self.empty_db_bytes)


def _db_size(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def shell_seconds(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def tar_commands(blob: Blob) -> list[str]:
    """How a user lists this blob with GNU tar: the pipe and tar's own decompression."""
    if blob.compression == "gzip":
        return [f"gzip -dc {blob.path} | tar -tv", f"tar -tvzf {blob.path}"]
    if blob.compression == "zstd":
        return [f"zstd -dc {blob.path} | tar -tv", f"tar --zstd -tvf {blob.path}"]
    return [f"tar -tvf {blob.path}"]


@dataclass
class Case:
    label: str
    blob: Blob
    ref: str


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    tools = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"{tools.splitlines()[0]}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    )


def rows_for(
    cases: list[Case], index_runs: dict[str, list[IndexRun]], tar_times: dict[str, list[float]]
) -> Iterator[list[str]]:
    for case in cases:
        runs = index_runs[case.label]
        seconds = statistics.median(r.seconds for r in runs)
        entries = runs[0].entries
        commands = tar_commands(case.blob)
        references = {c: statistics.median(tar_times[c]) for c in commands}
        ratios = " / ".join(f"{seconds / references[c]:.2f}" for c in commands)
        tar_text = " / ".join(f"{references[c]:.2f}" for c in commands)
        db_per_entry = (statistics.median(r.db_bytes for r in runs)) / max(entries, 1)
        yield [
            case.label,
            f"{entries}",
            f"{case.blob.megabytes:.0f}",
            f"{seconds:.2f}",
            tar_text,
            ratios,
            f"{entries / seconds:,.0f}",
            f"{max(r.peak_rss_mib for r in runs):.0f}",
            f"{db_per_entry:.0f}",
        ]


HEADER = [
    "layer",
    "entries",
    "MB",
    "index s",
    "tar s (pipe / tar -z)",
    "ratio",
    "entries/s",
    "peak RSS MiB",
    "DB B/entry",
]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--big-mb", type=int, default=300, help="big-binaries layer size")
    parser.add_argument("--huge-mb", type=int, default=1024, help="peak-RSS layer; 0 skips it")
    parser.add_argument("--no-multi", action="store_true", help="skip the three-layer image")
    parser.add_argument("--keep", type=Path, help="build in this directory and keep it")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="index into PostgreSQL instead of SQLite: a server URL without a database name, "
        "e.g. postgresql+psycopg://postgres@127.0.0.1:5432 (a database is made per run)",
    )
    args = parser.parse_args()

    print(f"# {machine()}", flush=True)
    print(f"# python benchmarks/index_bench.py {' '.join(sys.argv[1:])}".rstrip(), flush=True)
    with tempfile.TemporaryDirectory(prefix="index-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        built = time.perf_counter()
        small_tar = work / "small.tar"
        if not small_tar.exists():
            build_small_files_tar(small_tar)
        pool = binary_pool()
        big_tar = work / f"big-{args.big_mb}.tar"
        if not big_tar.exists():
            build_big_tar(big_tar, args.big_mb, pool)
        blobs = {
            f"{kind} {compression}": compressed(tar, compression)
            for kind, tar in (("small-files", small_tar), ("big-binaries", big_tar))
            for compression in ("gzip", "zstd", "tar")
        }
        print(f"# built layers in {time.perf_counter() - built:.0f} s", flush=True)

        shutil.rmtree(work / "registry", ignore_errors=True)
        server = start_plain(work / "registry")
        try:
            run_all(args, work, server, blobs, pool)
        finally:
            server.stop()


def run_all(
    args: argparse.Namespace,
    work: Path,
    server: RegistryServer,
    blobs: dict[str, Blob],
    pool: bytes,
) -> None:
    cases = [
        Case(label, blob, push_image(server, "bench/" + label.split()[0], label.split()[1], [blob]))
        for label, blob in blobs.items()
    ]
    databases: SqliteDatabases | PostgresDatabases = (
        PostgresDatabases(args.postgres) if args.postgres else SqliteDatabases(work)
    )
    runner = Runner(work, databases)
    runner.index(cases[0].ref)  # not timed: fills the bytecode cache (see installed.cli_env)
    index_runs: dict[str, list[IndexRun]] = {}
    tar_times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for case in cases:
            index_runs.setdefault(case.label, []).append(runner.index(case.ref))
            for command in tar_commands(case.blob):
                tar_times.setdefault(command, []).append(shell_seconds(command))
    print()
    print(markdown(list(rows_for(cases, index_runs, tar_times))), flush=True)

    if not args.no_multi:
        copy_tar = work / "small-copy.tar"
        if not copy_tar.exists():
            build_prefixed_copy(blobs["small-files tar"].path, copy_tar, "opt/copy")
        copy_blob = compressed(copy_tar, "zstd")
        layers = [blobs["small-files gzip"], blobs["big-binaries gzip"], copy_blob]
        multi_ref = push_image(server, "bench/multi", "three-layers", layers)
        copy_ref = push_image(server, "bench/small-copy", "zstd", [copy_blob])
        multi: list[IndexRun] = []
        copy: list[IndexRun] = []
        for _ in range(args.repeats):
            multi.append(runner.index(multi_ref))
            copy.append(runner.index(copy_ref))
        singles = [
            statistics.median(r.seconds for r in index_runs["small-files gzip"]),
            statistics.median(r.seconds for r in index_runs["big-binaries gzip"]),
            statistics.median(r.seconds for r in copy),
        ]
        wall = statistics.median(r.seconds for r in multi)
        print(
            f"\nthree-layer image (small-files gzip + big-binaries gzip + small-files copy zstd): "
            f"{multi[0].entries} entries, {wall:.2f} s; its layers alone: "
            + " + ".join(f"{s:.2f}" for s in singles)
            + f" = {sum(singles):.2f} s; ratio {wall / sum(singles):.2f}",
            flush=True,
        )

    if args.huge_mb:
        huge_tar = work / f"huge-{args.huge_mb}.tar"
        if not huge_tar.exists():
            build_big_tar(huge_tar, args.huge_mb, pool, seed=1)
        huge = compressed(huge_tar, "gzip", level=1)
        ref = push_image(server, "bench/huge", "gzip", [huge])
        run = runner.index(ref)
        uncompressed = args.huge_mb * (1 << 20) / 1e6
        print(
            f"\npeak RSS, {uncompressed:.0f} MB layer ({huge.megabytes:.0f} MB gzip): "
            f"{run.peak_rss_mib:.0f} MiB, {run.seconds:.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
