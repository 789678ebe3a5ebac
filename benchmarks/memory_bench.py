"""Peak memory and time of the whole-image readers on a big image: ``layers``, ``diff``,
``ls``, ``find --limit 5`` and ``find --all-layers`` across thousands of layers (issue #15).

Builds (once; reused with --db) an image of 1M entries in 20 layers, a rebuild of it (its
layers but the top one, and a new top), and an image of thousands of small layers that each
rewrite the same file, from the same synthetic layers as query_bench. Each command runs as a
CLI call (``--nl``: rows written as they come); its peak RSS is what /usr/bin/time reports,
its first-row time when stdout gets a first line. Run by hand:

    python benchmarks/memory_bench.py --db /tmp/layerindex-memory-bench.db
    python benchmarks/memory_bench.py --db … --baseline /tmp/layerindex-main --cases diff,ls

``--baseline`` runs every command a second time with another layerindex source tree first on
PYTHONPATH (``git archive main | tar -x -C /tmp/layerindex-main``), and prints the ratios.
(Before the streaming readers, ``layers`` on the 1M-entry image ran for more than 11 minutes:
compare those on a smaller image, ``--per-layer 10000``, in a database of its own.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from installed import cli_env
from query_bench import SyntheticLayer, real_paths
from sqlalchemy import select

from layerindex.index.database import open_database
from layerindex.index.schema import images, repositories
from layerindex.index.store import ImageRecord, LayerRecord, Store
from layerindex.layer.entries import Entry, EntryType

REGISTRY = "bench.example"
# The modules the commands load, named as in this tree and as in a --baseline tree from before
# the packages (issue 16): each side imports those it has.
WARM_UP = (
    "import contextlib, importlib\n"
    "for name in ('layerindex.cli.main', 'layerindex.index.find', 'layerindex.cli',\n"
    "             'layerindex.locate', 'layerindex.analysis', 'layerindex.output'):\n"
    "    with contextlib.suppress(ImportError):\n"
    "        importlib.import_module(name)\n"
)


LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def _record(name: str, digests: list[str]) -> ImageRecord:
    """An image of these layers (their digests are their diff_ids), with a manifest and config
    that ``layers`` can read."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": digests},
            "history": [{"created_by": f"RUN step {n}"} for n in range(len(digests))],
        }
    )
    config_digest = "sha256:" + hashlib.sha256(config.encode()).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": LAYER_TYPE, "digest": d, "size": 1} for d in digests],
        }
    )
    return ImageRecord(
        registry=REGISTRY,
        repository=f"memory/{name}",
        digest="sha256:" + hashlib.sha256(manifest.encode()).hexdigest(),
        reference=f"{REGISTRY}/memory/{name}:1",
        index_digest=None,
        media_type="application/vnd.oci.image.manifest.v1+json",
        platform="linux/amd64",
        config_digest=config_digest,
        created=None,
        manifest=manifest,
        config=config,
        layers=[LayerRecord(d, LAYER_TYPE, 1, d) for d in digests],
    )


@dataclass
class _Rewrite:
    """A small layer: the same file each time, and one of its own."""

    n: int
    compression: str = "gzip"
    uncompressed_size: int = 0

    def __iter__(self) -> Iterator[Entry]:
        yield Entry("/etc", EntryType.DIR, 0, 0o755, 0, 0, 1700000000, None)
        yield Entry("/etc/motd", EntryType.FILE, self.n, 0o644, 0, 0, 1700000000, None)
        yield Entry(f"/var/{self.n}", EntryType.FILE, 1, 0o644, 0, 0, 1700000000, None)


def _index(store: Store, name: str, digests: list[str], layers: dict[str, object]) -> None:
    image_id, states = store.record_image(_record(name, digests))
    for state, digest in zip(states, digests, strict=True):
        if not state.indexed and not store.link_known_diff(state):
            store.index_layer(state, layers[digest])  # type: ignore[arg-type]
    store.finish_image(image_id)


def build(db: str, layers: int, per_layer: int, rewrites: int) -> float:
    engine = open_database(db)
    store = Store(engine)
    pool, directories = real_paths(max(per_layer * 3, 150_000))
    rng = random.Random(1)
    started = time.perf_counter()
    digests = [f"sha256:{n:064x}" for n in range(layers + 1)]
    contents: dict[str, object] = {}
    for n, digest in enumerate(digests):
        start = rng.randrange(0, max(1, len(pool) - per_layer))
        contents[digest] = SyntheticLayer(pool[start : start + per_layer], directories, n % 12)
    _index(store, "big", digests[:layers], contents)
    print(f"  built {layers * per_layer:,} entries", file=sys.stderr)
    _index(store, "rebuilt", digests[: layers - 1] + digests[layers:], contents)
    small = [f"sha256:{n + 10**6:064x}" for n in range(rewrites)]
    _index(store, "rewrites", small, {d: _Rewrite(n) for n, d in enumerate(small)})
    store.analyze()
    engine.dispose()
    return time.perf_counter() - started


@dataclass(frozen=True)
class Measured:
    rows: int
    first_row: float
    wall: float
    peak_mib: float


def measure(args: list[str], env: dict[str, str]) -> Measured:
    """One CLI call. Its peak RSS as /usr/bin/time reports it: a child forked from this process
    would inherit this process's (bigger) high-water mark across exec."""
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.perf_counter()
        child = subprocess.Popen(
            [
                "/usr/bin/time",
                "-f",
                "%M",
                "-o",
                peak.name,
                sys.executable,
                "-m",
                "layerindex",
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert child.stdout is not None
        rows, first = 0, 0.0
        for _line in child.stdout:
            if not rows:
                first = time.perf_counter() - started
            rows += 1
        child.wait()
        wall = time.perf_counter() - started
        if child.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(args)}: exit {child.returncode}")
        kib = int(peak.read().split()[-1])
    return Measured(rows, first, wall, kib / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="/tmp/layerindex-memory-bench.db")
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--per-layer", type=int, default=50_000)
    parser.add_argument("--rewrites", type=int, default=3_000, help="layers of the third image")
    parser.add_argument("--baseline", metavar="DIR", help="a layerindex source tree to compare")
    parser.add_argument("--cases", help="a comma-separated list of the commands to run")
    args = parser.parse_args()
    db_url = f"sqlite:///{args.db}"
    if not Path(args.db).exists():
        seconds = build(db_url, args.layers, args.per_layer, args.rewrites)
        print(f"built in {seconds:.1f}s", file=sys.stderr)
    env = cli_env(Path(tempfile.gettempdir()) / "layerindex-bench-pycache")
    engine = open_database(db_url)
    with engine.connect() as connection:
        # By digest: the build records no tags.
        big, rebuilt, rewrites = (
            f"{REGISTRY}/{name}@{digest}"
            for name, digest in connection.execute(
                select(repositories.c.name, images.c.digest)
                .join(repositories, repositories.c.id == images.c.repository_id)
                .order_by(images.c.id)
            )
        )
    engine.dispose()
    cases = {
        "layers": ["layers", big, "--nl"],
        "diff": ["diff", big, rebuilt, "--nl"],
        "ls": ["ls", big, "--nl"],
        "find --limit 5 --name": ["find", "--name", "__init__.py", "--limit", "5", "--nl"],
        "find --limit 5 --regex": ["find", "--regex", ".", "--limit", "5", "--nl"],
        "find --limit 5 glob": ["find", "/**/*.py", "--limit", "5", "--nl"],
        "find --all-layers": ["find", "/etc/motd", "--all-layers", "--image", rewrites, "--nl"],
    }
    if args.cases:
        cases = {label: cases[label] for label in args.cases.split(",")}
    sides = {"new": env}
    if args.baseline:
        sides = {"old": {**env, "PYTHONPATH": args.baseline}, **sides}
    for side_env in sides.values():  # fill the bytecode cache: start-up is not what is measured
        subprocess.run([sys.executable, "-c", WARM_UP], env=side_env, check=True)
    print(f"\n{'command':<26} {'side':<4} {'rows':>8} {'first s':>8} {'wall s':>8} {'peak MiB':>9}")
    for label, command in cases.items():
        figures = {}
        for side, side_env in sides.items():
            m = figures[side] = measure(["--db", db_url, *command], side_env)
            print(
                f"{label:<26} {side:<4} {m.rows:>8,} {m.first_row:>8.2f} {m.wall:>8.2f} "
                f"{m.peak_mib:>9.0f}"
            )
        if "old" in figures:
            old, new = figures["old"], figures["new"]
            print(
                f"{'':<26} {'new/old':<13} {new.first_row / max(old.first_row, 1e-9):>8.2f} "
                f"{new.wall / old.wall:>8.2f} {new.peak_mib / old.peak_mib:>9.2f}"
            )


if __name__ == "__main__":
    main()
