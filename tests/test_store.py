"""The store and finder on SQLite and PostgreSQL, fed entries directly (no registry)."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import FromClause, func, select

from layerindex.analysis import diff, efficiency, path_efficiency
from layerindex.errors import LayerFormatError
from layerindex.index import find, patterns
from layerindex.index import images as images_module
from layerindex.index.database import Reader, open_database
from layerindex.index.find import FindFilters
from layerindex.index.images import Finder, Row, image_paths, size_of
from layerindex.index.patterns import parse
from layerindex.index.resolve import IndexedImage
from layerindex.index.schema import diffs, dirs, entries, images, layers, names
from layerindex.index.store import ImageRecord, LayerRecord, Store
from layerindex.layer import overlay
from layerindex.layer.entries import TYPE_CODES, Entry, EntryType


def find_all(finder: Finder, path: str) -> list[Row]:
    """Every layer's entry at ``path``, with its state (``find --all-layers``)."""
    return finder.find(parse("exact", path), FindFilters(all_layers=True))


@dataclass
class Walked:
    """Entries as a walker yields them; ``fail_after`` raises mid-layer like a corrupt blob."""

    rows: Sequence[Entry]
    fail_after: int | None = None
    compression: str = "gzip"
    uncompressed_size: int = 10240

    def __iter__(self) -> Iterator[Entry]:
        for i, entry in enumerate(self.rows):
            if self.fail_after is not None and i == self.fail_after:
                raise LayerFormatError("truncated gzip stream")
            yield entry


def e(
    path: str, kind: EntryType = EntryType.FILE, size: int = 3, target: str | None = None
) -> Entry:
    return Entry(path, kind, size, 0o755, 0, 0, 1700000000, target)


def image(digest: str, layer_digests: Sequence[str], reference: str = "app:1") -> ImageRecord:
    return ImageRecord(
        registry="registry.test",
        repository="team/app",
        digest=digest,
        reference=reference,
        index_digest=None,
        media_type="application/vnd.oci.image.manifest.v1+json",
        platform="linux/amd64",
        config_digest="sha256:" + "c" * 64,
        created=None,
        manifest="{}",
        config="{}",
        layers=[
            LayerRecord(d, "application/vnd.oci.image.layer.v1.tar+gzip", 100, "diff-" + d)
            for d in layer_digests
        ],
    )


def index_image(store: Store, record: ImageRecord, contents: Sequence[Sequence[Entry]]) -> None:
    image_id, states = store.record_image(record)
    for state, rows in zip(states, contents, strict=True):
        if not state.indexed and not store.link_known_diff(state):
            store.index_layer(state, Walked(rows))
    store.finish_image(image_id)


def count(store: Store, table: FromClause) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def test_find_reports_present_overwritten_and_deleted(store: Store, finder: Finder) -> None:
    index_image(
        store,
        image("sha256:i1", ["sha256:l0", "sha256:l1", "sha256:l2"]),
        [
            [e("/usr", EntryType.DIR, 0), e("/usr/bin/kubectl", size=1), e("/etc/motd")],
            [e("/usr/bin/kubectl", size=2), e("/etc/.keep")],
            [e("/etc/motd", EntryType.WHITEOUT, 0)],
        ],
    )
    rows = find_all(finder, "/usr/bin/kubectl")
    assert [(r["layer_index"], r["size"], r["state"], r["changed_by_layer"]) for r in rows] == [
        (0, 1, "overwritten", 1),
        (1, 2, "present", None),
    ]
    assert rows[1]["layer_digest"] == "sha256:l1"
    assert rows[1]["image"] == "app:1"
    motd = find_all(finder, "/etc/motd")
    assert [(r["layer_index"], r["state"], r["changed_by_layer"]) for r in motd] == [
        (0, "deleted", 2)
    ]
    assert find_all(finder, "/usr/bin/nothing") == []


def test_opaque_directory_deletes_lower_contents(store: Store, finder: Finder) -> None:
    index_image(
        store,
        image("sha256:i1", ["sha256:l0", "sha256:l1"]),
        [
            [e("/opt", EntryType.DIR, 0), e("/opt/old")],
            [e("/opt", EntryType.DIR, 0), e("/opt", EntryType.OPAQUE, 0), e("/opt/new")],
        ],
    )
    assert [(r["state"], r["changed_by_layer"]) for r in find_all(finder, "/opt/old")] == [
        ("deleted", 1)
    ]
    assert [r["state"] for r in find_all(finder, "/opt/new")] == ["present"]
    # The directory and its opaque marker coexist in one layer.
    assert [(r["layer_index"], r["type"]) for r in find_all(finder, "/opt")] == [
        (0, "dir"),
        (1, "dir"),
    ]


@pytest.mark.parametrize("streamed", [False, True], ids=["read-at-once", "streamed"])
def test_find_agrees_with_overlay_rules_on_random_images(
    store: Store,
    streamed: bool,
    monkeypatch: pytest.MonkeyPatch,
    finder: Finder,
) -> None:
    # Images stacked from a pool of random layers (a layer may sit in several images, and
    # twice in one): every row find gives, and its state, must be what overlay.fate says over
    # *all* the image's later entries, not only those find looks up. Streamed: candidates are
    # read path by path, a key or a directory at a time (under a limit, the dirs holding a
    # substring without listing them first); and any limit gives the first rows. ("/a-b/c"
    # sorts before "/a/b", though its dir "/a-b" sorts after "/a".)
    if streamed:
        monkeypatch.setattr(find, "STREAM_KEYS_MIN", 0)
        monkeypatch.setattr(find, "FIRST_KEYS", 1)
        monkeypatch.setattr(find, "FIRST_DIRS", 1)
        monkeypatch.setattr(find, "DIRS_SCANNED", 4)
        monkeypatch.setattr(patterns, "MANY_DIRS", 0)
    rng = random.Random(5)
    universe = ["/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/x", "/a-b", "/a-b/c", "/b", "/b/c"]
    kinds = [EntryType.FILE, EntryType.DIR, EntryType.SYMLINK, EntryType.WHITEOUT]
    pool: dict[str, list[Entry]] = {}
    for n in range(10):
        layer = []
        for path in universe:
            if rng.random() < 0.45:
                entry_type = rng.choice(kinds)
                layer.append(e(path, entry_type, 0 if entry_type is EntryType.DIR else n + 1))
                if entry_type is EntryType.DIR and rng.random() < 0.25:
                    layer.append(e(path, EntryType.OPAQUE, 0))
        pool[f"sha256:p{n}"] = layer
    stacks = [rng.choices(list(pool), k=rng.randint(1, 5)) for _ in range(12)]
    for n, digests in enumerate(stacks):
        index_image(
            store, image(f"sha256:i{n}", digests, f"app:{n:02}"), [pool[d] for d in digests]
        )
    for kind, value in [
        *(("exact", path) for path in universe),
        ("name", "c"),
        ("contains", "b"),
        ("contains", "a-b"),
        ("regex", "^/a.b/"),
        ("glob", "/a/**"),
    ]:
        pattern = parse(kind, value)  # type: ignore[arg-type]
        expected = []
        shown = set()  # what the image's final filesystem shows: find's rows without --all-layers
        for n, digests in enumerate(stacks):
            view = overlay.final_view([(x.path, x.type, None) for x in pool[d]] for d in digests)
            shown |= {
                (f"app:{n:02}", path, position)
                for path, (position, _type, _) in view.items()
                if pattern.matches(path)
            }
            held = [(pos, x.path, x.type) for pos, d in enumerate(digests) for x in pool[d]]
            for position, path, entry_type in held:
                if entry_type in (EntryType.WHITEOUT, EntryType.OPAQUE):
                    continue
                if pattern.matches(path):
                    fate = overlay.fate(position, path, held)
                    expected.append((f"app:{n:02}", path, position, fate.state, fate.by_position))
        for all_layers in (True, False):
            found = finder.find(pattern, FindFilters(all_layers=all_layers))
            got = [
                (r["image"], r["path"], r["layer_index"], r["state"], r["changed_by_layer"])
                for r in found
            ]
            wanted = sorted(x for x in expected if all_layers or x[3] == "present")
            assert got == wanted, (kind, value, all_layers)
            if not all_layers:
                assert {x[:3] for x in got} == shown, (kind, value)
            for limit in {1, 2, 3, 5, 8, len(found) - 1, len(found), len(found) + 1} - {0}:
                limited = finder.find(pattern, FindFilters(all_layers=all_layers, limit=limit))
                assert limited == found[:limit], (kind, value, all_layers, limit)


def test_paths_are_interned_once_across_layers(store: Store) -> None:
    shared = [e("/usr/bin/a"), e("/usr/bin/b"), e("/usr/lib/a")]
    index_image(store, image("sha256:i1", ["sha256:l0"]), [shared])
    index_image(store, image("sha256:i2", ["sha256:l9"]), [[*shared, e("/usr/bin/c")]])
    assert count(store, entries) == 7
    assert count(store, dirs) == 2  # /usr/bin, /usr/lib
    assert count(store, names) == 3  # a, b, c


def test_layer_shared_by_images_is_indexed_once(store: Store) -> None:
    index_image(store, image("sha256:i1", ["sha256:base"]), [[e("/bin/sh")]])
    _, states = store.record_image(image("sha256:i2", ["sha256:base", "sha256:top"], "app:2"))
    assert [s.indexed for s in states] == [True, False]
    assert count(store, diffs) == 1


def test_same_diff_id_under_another_digest_is_linked_not_downloaded(
    store: Store, finder: Finder
) -> None:
    index_image(store, image("sha256:i1", ["sha256:gz"]), [[e("/bin/sh")]])
    record = image("sha256:i2", ["sha256:zst"])
    record = ImageRecord(
        **{
            **record.__dict__,
            "layers": [
                LayerRecord(
                    "sha256:zst",
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                    90,
                    "diff-sha256:gz",
                )
            ],
        }
    )
    _, states = store.record_image(record)
    assert store.link_known_diff(states[0]) is True
    assert count(store, diffs) == 1
    assert [r["layer_digest"] for r in find_all(finder, "/bin/sh")] == [
        "sha256:gz",
        "sha256:zst",
    ]


def test_failed_layer_commits_no_rows_and_stays_unindexed(store: Store) -> None:
    _, states = store.record_image(image("sha256:i1", ["sha256:bad"]))
    rows = [e(f"/data/f{i}") for i in range(12000)]  # more than one batch is written first
    with pytest.raises(LayerFormatError):
        store.index_layer(states[0], Walked(rows, fail_after=11000))
    store.record_failure(states[0], "truncated gzip stream")
    assert count(store, entries) == 0
    assert count(store, diffs) == 0
    with store.engine.connect() as connection:
        row = connection.execute(select(layers.c.diff_ref, layers.c.last_error)).one()
    assert tuple(row) == (None, "truncated gzip stream")
    # Another layer takes the ids the rolled-back transaction had handed out.
    index_image(
        store, image("sha256:i2", ["sha256:other"]), [[e(f"/other/g{i}") for i in range(50)]]
    )
    # The next run retries it; interned ids from the rolled-back transaction are not reused.
    assert store.index_layer(states[0], Walked(rows)) == 12000
    assert count(store, entries) == 12050
    # Every row names the dir and name it was written with.
    with store.engine.connect() as connection:
        paths = connection.execute(
            select(dirs.c.path, names.c.name)
            .select_from(entries.join(dirs, dirs.c.id == entries.c.dir_id))
            .join(names, names.c.id == entries.c.name_id)
            .join(diffs, diffs.c.id == entries.c.diff_ref)
        ).all()
    assert sorted(f"{d}/{n}" for d, n in paths) == sorted(
        [r.path for r in rows] + [f"/other/g{i}" for i in range(50)]
    )


def test_duplicate_path_in_one_layer_keeps_the_last(store: Store, finder: Finder) -> None:
    index_image(
        store, image("sha256:i1", ["sha256:l0"]), [[e("/etc/x", size=1), e("/etc/x", size=9)]]
    )
    assert [r["size"] for r in find_all(finder, "/etc/x")] == [9]


def test_ls_image_shows_the_final_filesystem(store: Store, finder: Finder) -> None:
    index_image(
        store,
        image("sha256:i1", ["sha256:l0", "sha256:l1"]),
        [
            [e("/etc", EntryType.DIR, 0), e("/etc/a"), e("/etc/b")],
            [e("/etc/b", EntryType.WHITEOUT, 0), e("/etc/c", EntryType.SYMLINK, 0, "a")],
        ],
    )
    rows = list(finder.ls_layer("sha256:l1"))
    assert [(r["path"], r["type"]) for r in rows] == [("/etc/b", "whiteout"), ("/etc/c", "symlink")]
    assert [
        (r["path"], r["type"], r["link_target"]) for r in finder.ls_layer("sha256:l1", "/etc/c")
    ] == [("/etc/c", "symlink", "a")]


def test_whole_images_are_read_in_path_order_one_path_at_a_time(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    finder: Finder,
) -> None:
    # ls, diff and layers read an image's entries sorted by path in the database (PostgreSQL
    # too: code point order, not the locale's) and apply the layers path by path: the same
    # final filesystem and efficiency as the layers applied in memory, and the first row of
    # ls comes after reading a few paths, not the image.
    rng = random.Random(7)
    universe = ["/", "/A", "/a", "/a/b", "/a/b/c", "/a-b", "/a-b/c", "/a.", "/a./b", "/a0"]
    universe += ["/ab", "/é", "/é/x", "/z", "/z/ü", *(f"/z/f{n}" for n in range(40))]
    kinds = [EntryType.FILE, EntryType.DIR, EntryType.DIR, EntryType.SYMLINK, EntryType.WHITEOUT]
    pool: dict[str, list[Entry]] = {}
    for n in range(8):
        layer = []
        for path in universe:
            if rng.random() < 0.5:
                kind = EntryType.DIR if path == "/" else rng.choice(kinds)
                layer.append(e(path, kind, 0 if kind is EntryType.DIR else rng.randint(1, 99)))
                if kind is EntryType.DIR and rng.random() < 0.2:
                    layer.append(e(path, EntryType.OPAQUE, 0))
        pool[f"sha256:p{n}"] = layer
    stacks = [rng.choices(list(pool), k=rng.randint(2, 6)) for _ in range(6)]
    for n, digests in enumerate(stacks):
        index_image(store, image(f"sha256:i{n}", digests, f"app:{n}"), [pool[d] for d in digests])
    read: list[str] = []

    def counted(*args: object) -> Iterator[tuple[str, object]]:
        for path, held in image_paths(*args):  # type: ignore[arg-type]
            read.append(path)
            yield path, held

    monkeypatch.setattr(images_module, "image_paths", counted)
    views = []
    for n, digests in enumerate(stacks):
        img = _indexed(store, f"sha256:i{n}")
        layers = [[(x.path, x.type, x) for x in pool[d]] for d in digests]
        view = overlay.final_view(layers)
        views.append(view)
        read.clear()
        rows = finder.ls_image(img)
        first = next(rows)
        assert len(read) <= 2
        got = [(first["path"], first["layer_index"], first["type"])]
        got += [(r["path"], r["layer_index"], r["type"]) for r in rows]
        assert got == [(p, position, kind.value) for p, (position, kind, _) in sorted(view.items())]
        sizes = [[(x.path, x.type, x.size) for x in pool[d]] for d in digests]
        streamed = path_efficiency(
            (
                (path, [(position, kind, size_of(row)) for position, kind, row in held])
                for path, held in image_paths(finder.reader, img)
            ),
            len(digests),
        )
        assert streamed == efficiency(sizes)
    old, new = _indexed(store, "sha256:i0"), _indexed(store, "sha256:i1")
    changes = {r["path"]: r["change"] for r in diff(finder, old, new)}
    assert sorted(changes) == list(changes)
    assert {p for p, c in changes.items() if c == "added"} == views[1].keys() - views[0].keys()
    assert {p for p, c in changes.items() if c == "removed"} == views[0].keys() - views[1].keys()


def test_a_path_in_every_layer_is_one_sweep_for_all_layers(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    finder: Finder,
) -> None:
    # find --all-layers on a path each of 200 layers writes: every version's fate comes from
    # one pass over the path's later entries, not one pass per version (40,000 looked at).
    count = 200
    digests = [f"sha256:l{n}" for n in range(count)]
    layers = [[e("/etc", EntryType.DIR, 0), e("/etc/motd", size=n)] for n in range(count)]
    index_image(store, image("sha256:i1", digests), layers)
    looked_at = 0

    def counting(decide: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            nonlocal looked_at
            *rest, later = args
            looked_at += len(later)
            return decide(*rest, later)

        return counted

    for name in ("fate", "fates"):
        monkeypatch.setattr(
            overlay, name, counting(getattr(overlay, name, overlay.fate)), raising=False
        )
    rows = finder.find(parse("exact", "/etc/motd"), FindFilters(all_layers=True))
    assert [(r["layer_index"], r["state"], r["changed_by_layer"]) for r in rows] == [
        *((n, "overwritten", n + 1) for n in range(count - 1)),
        (count - 1, "present", None),
    ]
    assert looked_at <= 3 * count


def test_a_path_in_thousands_of_layers_is_one_seek_per_layer(tmp_path: Path) -> None:
    # With ANALYZE's statistics and 5,000 layers to look in, SQLite chose to read the path's
    # entries in every layer of the index and scan the layer list for each (3 s a statement
    # at 20,000 layers): the joins are written CROSS, one seek per pair and layer.
    engine = open_database(f"sqlite:///{tmp_path / 'index.db'}")
    count = 6000
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO dirs (id, path) VALUES (1, '/etc')")
        # The path in every layer, beside a name of each layer's own: most names are rare.
        connection.exec_driver_sql(
            "INSERT INTO names (id, name) VALUES (?, ?)",
            [(1, "motd"), *((n + 1, f"own{n}") for n in range(1, count + 1))],
        )
        connection.exec_driver_sql(
            "INSERT INTO diffs (id, diff_id, size, entry_count, indexed_at) "
            "VALUES (?, ?, 0, 1, '2026-01-01')",
            [(n, f"sha256:{n:064x}") for n in range(1, count + 1)],
        )
        connection.exec_driver_sql(
            "INSERT INTO entries (diff_ref, dir_id, name_id, type, size, mode, uid, gid, mtime) "
            "VALUES (?, 1, ?, ?, 1, 420, 0, 0, 0)",
            [
                (n, name, TYPE_CODES[EntryType.FILE])
                for n in range(1, count + 1)
                for name in (1, n + 1)
            ],
        )
    Store(engine).analyze()
    refs = list(range(1, 5001))
    terms, seeks, params = find._at_pairs("sqlite", [(1, 1)], refs)
    statements = [
        (f"WITH {terms}held AS MATERIALIZED (SELECT e.diff_ref FROM {seeks}) "
         "SELECT count(*) FROM held", params),
    ]  # fmt: skip
    found, found_params = find._found_by_name("sqlite", [1], refs)
    statements.append((f"{found} SELECT count(*) FROM found", found_params))
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert isinstance(raw, sqlite3.Connection)
        for sql, values in statements:
            steps = 0

            def step() -> int:
                nonlocal steps
                steps += 1
                return 0

            raw.set_progress_handler(step, 1000)
            assert raw.execute(sql, values).fetchone() == (5000,)
            raw.set_progress_handler(None, 0)
            assert steps < 1000  # a million VM steps; 30 million when the list is scanned
    engine.dispose()


def test_a_limit_stops_a_pattern_naming_no_dir_or_name_early(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    finder: Finder,
) -> None:
    # A regex without a literal can match any path: under a limit its image is read a few
    # dirs at a time in path order (PostgreSQL's dirs sorted as code points), not whole.
    layer = [
        e(f"/srv/{name}{n}/{f}") for n in range(100) for name in ("a", "A", "é", "a-") for f in "xy"
    ]
    index_image(store, image("sha256:i1", ["sha256:l0", "sha256:l1"]), [layer, [e("/srv/a7/x")]])
    everything = finder.find(parse("regex", "[xz]$"), FindFilters())
    assert len(everything) == 400  # /srv/a7/x once: layer 1 overwrites it
    fetched = 0
    rows = Reader.rows

    def counted(self: Reader, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        nonlocal fetched
        found = rows(self, sql, params)
        fetched += len(found)
        return found

    monkeypatch.setattr(Reader, "rows", counted)
    for limit in (1, 5, 200):
        fetched = 0
        limited = finder.find(parse("regex", "[xz]$"), FindFilters(limit=limit))
        assert limited == everything[:limit]
        if limit == 5:
            assert fetched < 300  # the image holds 1,600 entries


def _indexed(store: Store, digest: str) -> IndexedImage:
    with store.engine.connect() as connection:
        row = connection.execute(select(images).where(images.c.digest == digest)).one()
    return IndexedImage(
        row.id, row.reference, "registry.test", "team/app", row.digest, None, row.media_type,
        row.platform, row.manifest, row.config,
    )  # fmt: skip


def test_indexing_into_sqlite_imports_no_postgresql_dialect(tmp_path: Path) -> None:
    # ~30 ms of every `layerindex index` on SQLite (see the sha256 index in schema.py).
    script = (
        "import sys\n"
        "from layerindex.crawl.crawler import Crawler\n"
        "from layerindex.index.database import open_database\n"
        "from layerindex.index.store import Store\n"
        "from test_store import e, image, index_image\n"
        f"store = Store(open_database('sqlite:///{tmp_path / 'index.db'}'))\n"
        "index_image(store, image('sha256:i1', ['sha256:l0']), [[e('/usr/bin/kubectl')]])\n"
        "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy.dialects.')))\n"
    )
    tests = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert result.returncode == 0, result.stderr
    assert "sqlalchemy.dialects.sqlite" in result.stdout
    assert "postgresql" not in result.stdout


def test_find_by_digest_names_every_path_holding_the_content(store: Store, finder: Finder) -> None:
    digest = "sha256:" + "ab" * 32
    hashed = Entry("/usr/bin/kubectl", EntryType.FILE, 3, 0o755, 0, 0, 1700000000, None, digest)
    copied = hashed._replace(path="/opt/kubectl")
    other = hashed._replace(path="/usr/bin/helm", sha256="sha256:" + "cd" * 32)
    index_image(
        store,
        image("sha256:i1", ["sha256:l0", "sha256:l1"]),
        [[hashed, other], [copied, e("/usr/bin/kubectl", EntryType.WHITEOUT, 0)]],
    )
    rows = finder.find(parse("digest", digest), FindFilters(all_layers=True))
    assert [(r["path"], r["layer_index"], r["state"], r["sha256"]) for r in rows] == [
        ("/opt/kubectl", 1, "present", digest),
        ("/usr/bin/kubectl", 0, "deleted", digest),
    ]
