"""Query speed on a large index: exact find, --name, glob and --contains, p50/p95.

Builds (once; reused with --db) an index of synthetic layers made from real path lists (this
Python's stdlib and site-packages, and /usr), then times queries in process (the Finder) and as
CLI calls (start-up included). Run by hand:

    python benchmarks/query_bench.py --entries 10000000 --db /tmp/lx-10m.db
    python benchmarks/query_bench.py --entries 2000000 --postgres postgresql+psycopg://postgres@127.0.0.1:5432

Prints one table; figures go to benchmarks/RESULTS.md with the machine and the date.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from installed import cli_env
from sqlalchemy import text

from layerindex.index import find
from layerindex.index.database import libpq_url, open_database, open_reader
from layerindex.index.patterns import parse
from layerindex.index.store import ImageRecord, LayerRecord, Store
from layerindex.layer.entries import Entry, EntryType

LAYERS_PER_IMAGE = 5
VARIANTS = 12  # how many versions of a path tree the corpus holds (python3.x, app builds, …)
# Like real upper layers, some delete what lower ones wrote: ~10 whiteouts and a few opaque
# directories in a layer of 50,000 entries.
WHITEOUT_EVERY = 4999
OPAQUE_EVERY = 997


def real_paths(limit: int) -> tuple[list[str], frozenset[str]]:
    """Up to ``limit`` paths of this machine's trees in walk order, and which are directories
    (a layer's tar lists its directories too: later layers re-declare a path's ancestors)."""
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], "/usr"]
    paths: list[str] = []
    directories: set[str] = set()
    for root in roots:
        for directory, dirnames, filenames in os.walk(root):
            dirnames.sort()
            paths.append(directory)
            directories.add(directory)
            paths.extend(os.path.join(directory, f) for f in sorted(filenames))
            if len(paths) >= limit:
                return paths[:limit], frozenset(directories)
    return paths, frozenset(directories)


@dataclass
class SyntheticLayer:
    """A layer's entries, as a walker yields them (what Store.index_layer reads)."""

    paths: list[str]
    directories: frozenset[str]
    variant: int
    compression: str = "gzip"
    uncompressed_size: int = 0

    def __iter__(self) -> Iterator[Entry]:
        v = self.variant
        for i, path in enumerate(self.paths):
            directory = path in self.directories
            if directory:
                kind, size = EntryType.DIR, 0
            elif i % WHITEOUT_EVERY == 1:
                kind, size = EntryType.WHITEOUT, 0
            else:
                kind, size = EntryType.FILE, (i * 7919) % 100_000
            # Half the paths differ between variants: /usr/lib/x → /usr/lib.v3/x.
            if v and i % 2:
                head, _, tail = path.rpartition("/")
                path = f"{head}.v{v}/{tail}"
            yield Entry(path, kind, size, 0o644, 0, 0, 1700000000, None)
            if directory and i % OPAQUE_EVERY == 0:
                yield Entry(path, EntryType.OPAQUE, 0, 0o644, 0, 0, 1700000000, None)


def build(
    db: str, entries: int, per_layer: int, pool: list[str], directories: frozenset[str]
) -> float:
    engine = open_database(db)
    store = Store(engine)
    rng = random.Random(1)
    layers = max(1, entries // per_layer)
    started = time.perf_counter()
    for image in range(0, layers, LAYERS_PER_IMAGE):
        digests = [f"sha256:{n:064x}" for n in range(image, min(layers, image + LAYERS_PER_IMAGE))]
        record = ImageRecord(
            registry="bench.example",
            repository=f"corpus/image{image // LAYERS_PER_IMAGE}",
            digest=f"sha256:{image + 10**9:064x}",
            reference=f"bench.example/corpus/image{image // LAYERS_PER_IMAGE}:1",
            index_digest=None,
            media_type="application/vnd.oci.image.manifest.v1+json",
            platform="linux/amd64",
            config_digest=f"sha256:{image + 2 * 10**9:064x}",
            created=None,
            manifest="{}",
            config="{}",
            layers=[
                LayerRecord(d, "application/vnd.oci.image.layer.v1.tar+gzip", 1, d) for d in digests
            ],
        )
        image_id, states = store.record_image(record)
        for n, state in enumerate(states):
            start = rng.randrange(0, max(1, len(pool) - per_layer))
            layer = SyntheticLayer(
                pool[start : start + per_layer], directories, (image + n) % VARIANTS
            )
            store.index_layer(state, layer)
        store.finish_image(image_id)
        done = min(layers, image + LAYERS_PER_IMAGE) * per_layer
        print(f"\r  built {done:,} entries", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    store.analyze()  # as `layerindex index` and `crawl` do after their writes
    engine.dispose()
    return time.perf_counter() - started


PG_DATABASE = "layerindex_query_bench"


def _postgres_database(server_url: str) -> bool:
    """Make PG_DATABASE on the server if it is missing; whether it holds an index already."""
    import psycopg

    plain = libpq_url(server_url.rstrip("/"))
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
        if not admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
        ).fetchone():
            admin.execute(f"CREATE DATABASE {PG_DATABASE}")
            return False
    with psycopg.connect(f"{plain}/{PG_DATABASE}") as connection:
        found = connection.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'entries'"
        ).fetchone()
        return (
            found is not None
            and connection.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None
        )


def warm_page_cache(path: Path) -> None:
    with path.open("rb") as file:
        while file.read(16 << 20):
            pass


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--per-layer", type=int, default=50_000)
    parser.add_argument("--db", default="/tmp/layerindex-query-bench.db")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--cli-runs", type=int, default=10)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="index into PostgreSQL instead of SQLite: a server URL without a database name; the "
        f"index is its database {PG_DATABASE}, built once (if empty) and kept like --db",
    )
    args = parser.parse_args()
    if args.postgres:
        db_url = f"{args.postgres.rstrip('/')}/{PG_DATABASE}"
        built = _postgres_database(args.postgres)
    else:
        db_url = f"sqlite:///{args.db}"
        built = Path(args.db).exists()
    env = cli_env(Path(tempfile.gettempdir()) / "layerindex-bench-pycache")
    pool, directories = real_paths(max(args.per_layer * 3, 150_000))
    print(f"path pool: {len(pool):,} real paths", file=sys.stderr)
    if not built:
        seconds = build(db_url, args.entries, args.per_layer, pool, directories)
        print(f"built in {seconds:.1f}s ({args.entries / seconds:,.0f} entries/s)", file=sys.stderr)
    engine = open_database(db_url)
    with engine.connect() as connection:
        total = connection.execute(text("SELECT count(*) FROM entries")).scalar_one()
        dirs = connection.execute(text("SELECT count(*) FROM dirs")).scalar_one()
        names = connection.execute(text("SELECT count(*) FROM names")).scalar_one()
        size = (
            connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
            if args.postgres
            else Path(args.db).stat().st_size
        )
    engine.dispose()
    reader = open_reader(db_url)  # what the find command reads through
    rng = random.Random(2)
    picks = [rng.choice(pool) for _ in range(args.queries)]
    cases = {
        "exact": [("exact", p) for p in picks],
        "--name": [("name", p.rpartition("/")[2] or "x") for p in picks],
        "glob": [("glob", p.rpartition("/")[0] + "/*" + p[-3:]) for p in picks],
        "--contains": [("contains", p.rpartition("/")[2][:6] or "lib") for p in picks],
    }
    flags = {"exact": [], "--name": ["--name"], "glob": [], "--contains": ["--contains"]}
    print(
        f"\nindex: {total:,} entries, {dirs:,} dirs, {names:,} names, "
        f"{size / total:.1f} bytes/entry ({size / 1e6:.0f} MB)\n"
    )
    print(f"{'query':<12} {'p50 ms':>9} {'p95 ms':>9} {'rows p50':>9} {'CLI p50 ms':>11}")
    for label, queries in cases.items():
        # Each kind starts from the file in the page cache, not from what the kind before it
        # happened to read (machines that reclaim idle cache otherwise time the disk).
        if not args.postgres:
            warm_page_cache(Path(args.db))
        times, rows = [], []
        for kind, value in queries:
            pattern = parse(kind, value)  # type: ignore[arg-type]
            t = time.perf_counter()
            found = list(find.find(reader, pattern, find.FindFilters(all_layers=True, limit=1000)))
            times.append((time.perf_counter() - t) * 1000)
            rows.append(len(found))
        cli = []
        for i, (_kind, value) in enumerate(queries[: args.cli_runs + 1]):
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "layerindex",
                    "--db",
                    db_url,
                    "find",
                    *flags[label],
                    value,
                    "--json",
                    "--limit",
                    "1000",
                ],
                env=env,
                capture_output=True,
                check=False,
            )
            if i:  # the first call is not timed: it fills the bytecode cache
                cli.append((time.perf_counter() - t) * 1000)
        p50, p95 = percentiles(times)
        print(
            f"{label:<12} {p50:>9.2f} {p95:>9.2f} {statistics.median(rows):>9.0f} "
            f"{statistics.median(cli):>11.0f}"
        )
    reader.close()


if __name__ == "__main__":
    main()
