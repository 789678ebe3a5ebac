"""The crawler starts walking an image's big new layers before it writes anything (and so, in
`layerindex index`, before SQLAlchemy is imported and the database opened): crawl/crawler.py's
WalksAhead. These tests lower walkproc.CHILD_WALK_MIN_BYTES so that every layer is one, and check
that the crawler takes those walks, that a run makes exactly the requests it made before walks
started ahead (errors included), and that nothing runs on after it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from faults import FaultProxy
from images import Layer, make_image, make_index, make_layer
from registry_server import RegistryServer

from layerindex.crawl.crawler import Crawler, StartedWalk, WalksAhead
from layerindex.errors import LayerIndexError
from layerindex.index.database import open_database
from layerindex.index.store import Writer
from layerindex.reference import Reference, parse_reference
from layerindex.registry.client import RegistryClient
from layerindex.registry.manifest import Descriptor

Run = Callable[..., Result]

BASE = make_layer({f"/usr/lib/base{i}": bytes([i]) * i for i in range(40)})
MIDDLE = make_layer({"/etc/motd": b"hello\n", "/etc/hosts": b"127.0.0.1 localhost\n"}, "zstd")
TOP = make_layer({"/usr/bin/tool": b"tool v1"})
APP = make_image([BASE, MIDDLE, TOP])
OTHER = make_image([BASE, make_layer({"/srv/other": b"other"})])


@pytest.fixture(autouse=True)
def every_layer_is_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("layerindex.layer.walkproc.CHILD_WALK_MIN_BYTES", 0)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The layers walked ahead, and those the crawler took."""
    seen: dict[str, list[str]] = {"started": [], "taken": []}
    start, take = WalksAhead.start, WalksAhead.take

    def recording_start(
        self: WalksAhead, client: Any, ref: Reference, layer: Descriptor, *args: Any, **kw: Any
    ) -> bool:
        began = start(self, client, ref, layer, *args, **kw)
        if began:
            seen["started"].append(layer.digest)
        return began

    def recording_take(self: WalksAhead, digest: str, diff_id: str | None) -> StartedWalk | None:
        walk = take(self, digest, diff_id)
        if walk is not None:
            seen["taken"].append(digest)
        return walk

    monkeypatch.setattr(WalksAhead, "start", recording_start)
    monkeypatch.setattr(WalksAhead, "take", recording_take)
    return seen


def descriptor(layer: Layer) -> Descriptor:
    return Descriptor(layer.media_type, layer.digest, len(layer.blob))


def as_started(walk: StartedWalk | LayerIndexError) -> StartedWalk:
    assert isinstance(walk, StartedWalk)
    return walk


def requests_made(proxy: FaultProxy) -> list[tuple[str, str]]:
    return sorted((r.method, r.path) for r in proxy.requests)


def find_paths(run: Run, db_url: str, path: str) -> set[tuple[str, str]]:
    rows = json.loads(run("--db", db_url, "find", path, "--json").stdout)
    return {(r["layer_digest"], r["path"]) for r in rows}


def test_the_crawler_takes_the_walks_and_asks_for_nothing_twice(
    registry: RegistryServer,
    fault_proxy: FaultProxy,
    db_url: str,
    run: Run,
    started: dict[str, list[str]],
) -> None:
    registry.push("team/app", "1.0", APP)
    ref = f"{fault_proxy.host}/team/app:1.0"
    result = run("--db", db_url, "index", ref)
    assert result.exit_code == 0, result.output
    assert "layers: 3 indexed, 0 known, 0 skipped, 0 failed  entries: 43" in result.stdout
    layers = [BASE.digest, MIDDLE.digest, TOP.digest]
    assert sorted(started["started"]) == sorted(started["taken"]) == sorted(layers)
    # What a run asks, as before walks started ahead: a ping, the tag's HEAD, the manifest, the
    # config, each blob once.
    assert requests_made(fault_proxy) == sorted(
        [
            ("GET", "/v2/"),
            ("HEAD", "/v2/team/app/manifests/1.0"),
            ("GET", "/v2/team/app/manifests/1.0"),
            ("GET", f"/v2/team/app/blobs/{APP.config_digest}"),
        ]
        + [("GET", f"/v2/team/app/blobs/{digest}") for digest in layers]
    )
    assert (TOP.digest, "/usr/bin/tool") in find_paths(run, db_url, "/usr/bin/tool")


def test_a_walk_ahead_hashes_files_when_asked(
    registry: RegistryServer, run: Run, started: dict[str, list[str]]
) -> None:
    registry.push("team/app", "1.0", APP)
    assert run("index", "--hash-files", f"{registry.host}/team/app:1.0").exit_code == 0
    assert sorted(started["taken"]) == sorted(layer.digest for layer in APP.layers)
    digest = "sha256:" + hashlib.sha256(b"tool v1").hexdigest()
    rows = json.loads(run("find", "--digest", digest, "--json").stdout)
    assert [(r["layer_digest"], r["path"]) for r in rows] == [(TOP.digest, "/usr/bin/tool")]


def test_layers_and_images_the_index_holds_are_not_walked_ahead(
    fault_proxy: FaultProxy, db_url: str, run: Run, started: dict[str, list[str]]
) -> None:
    fault_proxy.push("team/app", "1.0", APP)  # to the registry behind it
    fault_proxy.push("team/other", "1", OTHER)
    assert run("--db", db_url, "index", f"{fault_proxy.host}/team/app:1.0").exit_code == 0
    started["started"].clear()
    result = run("--db", db_url, "index", f"{fault_proxy.host}/team/other:1")
    assert "layers: 1 indexed, 1 known, 0 skipped, 0 failed  entries: 41" in result.stdout
    assert started["started"] == [OTHER.layers[1].digest]  # BASE's diff_id is indexed
    assert len(fault_proxy.seen(f"/blobs/{BASE.digest}", "GET")) == 1
    # An image the index holds: the crawler stops at the HEAD.
    fault_proxy.requests.clear()
    again = run("--db", db_url, "index", f"{fault_proxy.host}/team/other:1")
    assert "unchanged" in again.stdout
    assert started["started"] == [OTHER.layers[1].digest]
    assert requests_made(fault_proxy) == [("GET", "/v2/"), ("HEAD", "/v2/team/other/manifests/1")]


def test_one_walk_ahead_per_contents(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run, started: dict[str, list[str]]
) -> None:
    files = {"/opt/same": b"the same tar, compressed twice"}
    gzipped, zstded = make_layer(files), make_layer(files, "zstd")
    assert gzipped.diff_id == zstded.diff_id and gzipped.digest != zstded.digest
    registry.push("team/twice", "1", make_image([gzipped, zstded]))
    result = run("index", f"{fault_proxy.host}/team/twice:1")
    assert result.exit_code == 0, result.output
    assert started["started"] == started["taken"] == [gzipped.digest]
    assert len(fault_proxy.seen(f"/blobs/{gzipped.digest}", "GET")) == 1
    assert len(fault_proxy.seen(f"/blobs/{zstded.digest}", "GET")) <= 1


def test_an_index_manifest_fetches_each_platform_once(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run, started: dict[str, list[str]]
) -> None:
    amd = make_image([make_layer({"/bin/tool": b"amd64"})])
    arm = make_image([make_layer({"/bin/tool": b"arm64!"})], platform="linux/arm64/v8")
    registry.push("team/multi", "1", make_index([amd, arm]))
    ref = f"{fault_proxy.host}/team/multi:1"
    assert run("index", "--platform", "all", ref).exit_code == 0
    assert sorted(started["started"]) == sorted(started["taken"])
    assert sorted(started["started"]) == sorted([amd.layers[0].digest, arm.layers[0].digest])
    assert requests_made(fault_proxy) == sorted(
        [("GET", "/v2/"), ("HEAD", "/v2/team/multi/manifests/1")]
        + [("GET", f"/v2/team/multi/manifests/{d}") for d in ("1", amd.digest, arm.digest)]
        + [("GET", f"/v2/team/multi/blobs/{i.config_digest}") for i in (amd, arm)]
        + [("GET", f"/v2/team/multi/blobs/{i.layers[0].digest}") for i in (amd, arm)]
    )
    # A new index holding an image the index holds: only the new platform is fetched.
    new_arm = make_image([make_layer({"/bin/tool": b"arm64 v2"})], platform="linux/arm64/v8")
    registry.push("team/multi", "2", make_index([amd, new_arm]))
    started["started"].clear()
    fault_proxy.requests.clear()
    result = run("index", "--platform", "all", f"{fault_proxy.host}/team/multi:2")
    assert result.exit_code == 0, result.output
    assert f"{amd.digest}  linux/amd64  unchanged" in result.stdout
    assert started["started"] == [new_arm.layers[0].digest]
    assert requests_made(fault_proxy) == sorted(
        [
            ("GET", "/v2/"),
            ("HEAD", "/v2/team/multi/manifests/2"),
            ("GET", "/v2/team/multi/manifests/2"),
            ("GET", f"/v2/team/multi/manifests/{new_arm.digest}"),
            ("GET", f"/v2/team/multi/blobs/{new_arm.config_digest}"),
            ("GET", f"/v2/team/multi/blobs/{new_arm.layers[0].digest}"),
        ]
    )


def test_what_failed_ahead_is_reported_once_by_the_crawler_and_not_asked_again(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run, started: dict[str, list[str]]
) -> None:
    registry.push("team/app", "1.0", APP)
    ref = f"{fault_proxy.host}/team/app:1.0"
    fault_proxy.status(f"/blobs/{MIDDLE.digest}", 404, method="GET")
    result = run("index", ref)
    assert result.exit_code == 1
    assert "layers: 2 indexed, 0 known, 0 skipped, 1 failed" in result.stdout
    assert result.stderr.count(f"image {ref} layer {MIDDLE.digest}") == 1
    assert "not found" in result.stderr
    assert len(fault_proxy.seen(f"/blobs/{MIDDLE.digest}", "GET")) == 1
    assert started["taken"] == [BASE.digest]  # walking ahead ended at the failure
    assert len(fault_proxy.seen(f"/blobs/{TOP.digest}", "GET")) == 1
    # An unknown tag: one HEAD, its 404 said once.
    fault_proxy.requests.clear()
    missing = run("index", f"{fault_proxy.host}/team/app:9.9")
    assert missing.exit_code == 1
    assert missing.stderr.count("tag 9.9 not found") == 1
    assert requests_made(fault_proxy) == [("GET", "/v2/"), ("HEAD", "/v2/team/app/manifests/9.9")]


def test_a_corrupt_blob_walked_ahead_fails_its_layer_alone(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run, started: dict[str, list[str]]
) -> None:
    registry.push("team/app", "1.0", APP)
    ref = f"{fault_proxy.host}/team/app:1.0"
    fault_proxy.corrupt(f"/blobs/{MIDDLE.digest}", times=1)
    result = run("index", ref)
    assert result.exit_code == 1
    assert "layers: 2 indexed, 0 known, 0 skipped, 1 failed  entries: 41" in result.stdout
    assert f"image {ref} layer {MIDDLE.digest}" in result.stderr
    assert MIDDLE.digest in started["taken"]  # the failure came from the walk started ahead
    again = run("index", ref)
    assert "layers: 1 indexed, 2 known, 0 skipped, 0 failed  entries: 43" in again.stdout


def test_walks_not_taken_are_stopped(
    fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_proxy.push("team/app", "1.0", APP)
    # A walk that cannot end by itself; stopping it must not wait for its read, however long
    # the wait for the feeding thread is allowed to be.
    fault_proxy.stall(f"/blobs/{TOP.digest}", after=10, seconds=60)
    monkeypatch.setattr("layerindex.layer.walkproc.STOP_FEED_WAIT", 60)
    began = time.monotonic()
    ref = parse_reference(f"{fault_proxy.host}/team/app:1.0")
    client = RegistryClient()
    permits = threading.BoundedSemaphore(len(APP.layers))
    with WalksAhead(permits) as ahead:
        for layer in APP.layers:
            assert ahead.start(client, ref, descriptor(layer), layer.diff_id, hash_files=False)
        # As many walks as permits: the next one is the crawler's to start, later.
        assert not ahead.start(client, ref, descriptor(OTHER.layers[1]), "x", hash_files=False)
        walks = {digest: as_started(walk).walk for digest, walk in ahead._walks.items()}
        assert sorted(walks) == sorted([BASE.digest, MIDDLE.digest, TOP.digest])
        # A layer the index recorded with another diff_id is walked anew, as recorded.
        assert ahead.take(MIDDLE.digest, "sha256:" + "0" * 64) is None
        assert walks[MIDDLE.digest]._child.poll() is not None
        taken = ahead.take(BASE.digest, BASE.diff_id)
        assert taken is not None
        with taken as walk:
            assert {e.path for e in walk} == {f"/usr/lib/base{i}" for i in range(40)}
        assert walks[TOP.digest]._child.poll() is None
    assert all(walk._child.poll() is not None for walk in walks.values())
    assert ahead._walks == {}
    assert all(permits.acquire(blocking=False) for _ in APP.layers)  # each given back
    assert time.monotonic() - began < 10


def test_a_worker_walks_a_layer_only_under_its_lease(
    registry: RegistryServer, db_url: str, started: dict[str, list[str]]
) -> None:
    """Without the crawl lock (``crawl --worker``), a layer is fetched only once the crawler
    holds its lease, which is written in the index: nothing is walked ahead."""
    registry.push("team/app", "1.0", APP)
    engine = open_database(db_url)
    try:
        crawler = Crawler(RegistryClient(), Writer(engine), exclusive=False)
        [outcome] = crawler.index(parse_reference(f"{registry.host}/team/app:1.0"))
    finally:
        engine.dispose()
    assert (outcome.indexed, outcome.errors) == (3, [])
    assert started == {"started": [], "taken": []}


def test_a_crawl_walks_ahead_and_a_worker_does_not(
    registry: RegistryServer,
    fault_proxy: FaultProxy,
    postgres_url: str,
    run: Run,
    tmp_path: Path,
    started: dict[str, list[str]],
) -> None:
    registry.push("team/app", "1.0", APP)
    registry.push("team/other", "1", OTHER)
    images = tmp_path / "images.txt"
    images.write_text(f"{fault_proxy.host}/team/app:1.0\n")
    result = run("--db", postgres_url, "crawl", "--images", str(images))
    assert result.exit_code == 0, result.output
    assert (
        sorted(started["started"])
        == sorted(started["taken"])
        == sorted(layer.digest for layer in APP.layers)
    )
    assert all(
        len(fault_proxy.seen(f"/blobs/{d}", "GET")) == 1
        for d in [layer.digest for layer in APP.layers]
    )
    # A worker fetches a layer once it holds the layer's lease, never before.
    started["started"].clear()
    images.write_text(f"{fault_proxy.host}/team/other:1\n")
    result = run("--db", postgres_url, "crawl", "--worker", "--images", str(images))
    assert result.exit_code == 0, result.output
    assert started["started"] == []
    assert len(fault_proxy.seen(f"/blobs/{OTHER.layers[1].digest}", "GET")) == 1


def test_a_layer_in_back_off_is_not_walked_ahead(
    registry: RegistryServer, fault_proxy: FaultProxy, db_url: str, started: dict[str, list[str]]
) -> None:
    """A crawl (respecting back-off) walks ahead too, but not a layer it is leaving alone."""
    registry.push("team/middle", "1", make_image([MIDDLE]))
    registry.push("team/app", "1.0", APP)
    fault_proxy.status(f"/blobs/{MIDDLE.digest}", 404, method="GET", times=None)
    engine = open_database(db_url)
    try:
        crawler = Crawler(
            RegistryClient(),
            lambda: Writer(engine),
            db_url=db_url,
            respect_backoff=True,
            exclusive=True,
        )
        for _ in range(2):  # two failures in a row: MIDDLE is left alone for a while
            [failed] = crawler.index(parse_reference(f"{fault_proxy.host}/team/middle:1"))
            assert failed.failed == 1
        assert started["taken"] == []  # the walk ahead met the 404: the crawler reported it
        started["started"].clear()
        [outcome] = crawler.index(parse_reference(f"{fault_proxy.host}/team/app:1.0"))
    finally:
        engine.dispose()
    assert (outcome.indexed, outcome.failed) == (2, 1)
    assert "left alone until" in outcome.errors[0]
    assert (
        sorted(started["started"]) == sorted(started["taken"]) == sorted([BASE.digest, TOP.digest])
    )
    assert len(fault_proxy.seen(f"/blobs/{MIDDLE.digest}", "GET")) == 2


def test_the_walks_start_before_sqlalchemy_is_imported(
    registry: RegistryServer, home: Path
) -> None:
    """`layerindex index` in a process of its own, into a new database and then into one that
    holds an image: SQLAlchemy is not imported yet when each walk ahead starts."""
    registry.push("team/app", "1.0", APP)
    registry.push("team/other", "1", OTHER)
    db = home / "index.db"
    script = """
import sys
from layerindex.cli.main import cli
from layerindex.errors import LayerIndexError
from layerindex.crawl.crawler import WalksAhead
from layerindex.layer import walkproc
walkproc.CHILD_WALK_MIN_BYTES = 0
start = WalksAhead.start
def recording_start(self, client, ref, layer, *args, **kw):
    loaded = sorted(m for m in sys.modules if m.startswith("sqlalchemy"))
    began = start(self, client, ref, layer, *args, **kw)
    print(layer.digest, began, loaded, file=sys.stderr)
    return began
WalksAhead.start = recording_start
cli(sys.argv[1:])
"""

    def walks_ahead(ref: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", script, "--db", f"sqlite:///{db}", "index", ref],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return [line for line in done.stderr.splitlines() if line.startswith("sha256:")]

    new = walks_ahead(f"{registry.host}/team/app:1.0")
    assert new == [f"{layer.digest} True []" for layer in APP.layers]
    held = walks_ahead(f"{registry.host}/team/other:1")
    assert held == [f"{OTHER.layers[1].digest} True []"]
