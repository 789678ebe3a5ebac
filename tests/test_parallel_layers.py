"""An image's layers are walked at once, each in a child process; written at once on PostgreSQL
(several writers), one after another on SQLite (one writer). Layers under
CHILD_WALK_MIN_BYTES are walked in process: these tests lower it to walk theirs in children."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import FaultProxy
from images import make_image, make_layer
from registry_server import RegistryServer
from sqlalchemy import Engine, func, select

from layerindex.crawl.crawler import Crawler, ImageOutcome
from layerindex.index.database import open_database
from layerindex.index.schema import diffs, dirs, entries, layers, names
from layerindex.index.store import LayerState, Store, WalkedLayer, Writer
from layerindex.layer.walker import LayerWalker
from layerindex.layer.walkproc import CHILD_WALK_MIN_BYTES, ChildWalk, walk_in_child
from layerindex.reference import parse_reference
from layerindex.registry.client import RegistryClient

CONTENTS = [{f"/layer{n}/file{i}": bytes([n]) * i for i in range(50)} for n in range(3)]
IMAGE = make_image([make_layer(files) for files in CONTENTS])
EXPECTED = {
    (layer.digest, path, len(data))
    for layer, files in zip(IMAGE.layers, CONTENTS, strict=True)
    for path, data in files.items()
}


@pytest.fixture(autouse=True)
def walk_every_layer_in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("layerindex.layer.walkproc.CHILD_WALK_MIN_BYTES", 0)


def index(engine: Engine, ref: str) -> list[ImageOutcome]:
    return Crawler(RegistryClient(), Writer(engine)).index(parse_reference(ref))


def indexed_rows(engine: Engine) -> set[tuple[str, str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(layers.c.digest, dirs.c.path, names.c.name, entries.c.size)
            .join(diffs, diffs.c.id == layers.c.diff_ref)
            .join(entries, entries.c.diff_ref == diffs.c.id)
            .join(dirs, dirs.c.id == entries.c.dir_id)
            .join(names, names.c.id == entries.c.name_id)
        ).all()
    return {(digest, f"{d}/{n}", size) for digest, d, n, size in rows}


def most_at_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many layers were being written at the same time, at most."""
    real_index_layer = Store.index_layer
    lock = threading.Lock()
    now, most = [0], [0]
    all_started = threading.Barrier(len(IMAGE.layers), timeout=5)

    def index_layer(self: Store, layer: LayerState, walk: WalkedLayer) -> int:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            if self.engine.dialect.name != "sqlite":
                all_started.wait()  # every layer is being written before any one ends
            return real_index_layer(self, layer, walk)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(Store, "index_layer", index_layer)
    return most


def test_an_images_layers_are_written_at_once_on_postgresql_only(
    registry: RegistryServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.push("team/parallel", "1", IMAGE)
    most = most_at_once(monkeypatch)
    engine = open_database(db_url)
    outcomes = index(engine, f"{registry.host}/team/parallel:1")
    assert [(o.indexed, o.failed, o.errors) for o in outcomes] == [(3, 0, [])]
    assert most[0] == (1 if engine.dialect.name == "sqlite" else 3)
    assert outcomes[0].bytes == sum(layer.size for layer in IMAGE.layers)
    assert indexed_rows(engine) == EXPECTED
    engine.dispose()


def test_an_images_layers_are_walked_at_once_on_every_database(
    registry: RegistryServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.push("team/parallel", "3", IMAGE)
    all_walking = threading.Barrier(len(IMAGE.layers), timeout=10)

    @contextlib.contextmanager
    def walk_at_once(walker: LayerWalker) -> Iterator[ChildWalk]:
        all_walking.wait()  # every layer is being walked before any one is written
        with walk_in_child(walker) as walked:
            yield walked

    monkeypatch.setattr("layerindex.layer.walkproc.walk_in_child", walk_at_once)
    engine = open_database(db_url)
    outcomes = index(engine, f"{registry.host}/team/parallel:3")
    assert [(o.indexed, o.failed, o.errors) for o in outcomes] == [(3, 0, [])]
    assert indexed_rows(engine) == EXPECTED
    engine.dispose()


def test_bad_layers_walked_at_once_commit_nothing_and_are_retried(
    registry: RegistryServer, fault_proxy: FaultProxy, db_url: str
) -> None:
    registry.push("team/parallel", "2", IMAGE)
    ref = f"{fault_proxy.host}/team/parallel:2"
    for layer in IMAGE.layers[1:]:
        fault_proxy.corrupt(f"/blobs/{layer.digest}", times=1)
    engine = open_database(db_url)
    (outcome,) = index(engine, ref)
    assert (outcome.indexed, outcome.failed) == (1, 2)
    for layer in IMAGE.layers[1:]:  # each error names its layer
        assert any(f"image {ref} layer {layer.digest}: " in e for e in outcome.errors)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(entries)).scalar_one()
    assert count == len(CONTENTS[0])
    (again,) = index(engine, ref)
    assert (again.indexed, again.known, again.failed, again.errors) == (2, 1, 0, [])
    assert indexed_rows(engine) == EXPECTED
    engine.dispose()


def test_small_layers_are_walked_in_process(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("layerindex.layer.walkproc.CHILD_WALK_MIN_BYTES", CHILD_WALK_MIN_BYTES)
    assert all(layer.size < CHILD_WALK_MIN_BYTES for layer in IMAGE.layers)
    monkeypatch.setattr("layerindex.layer.walkproc.walk_in_child", None)  # a child would fail
    registry.push("team/parallel", "4", IMAGE)
    engine = open_database(f"sqlite:///{tmp_path / 'index.db'}")
    outcomes = index(engine, f"{registry.host}/team/parallel:4")
    assert [(o.indexed, o.failed, o.errors) for o in outcomes] == [(3, 0, [])]
    assert indexed_rows(engine) == EXPECTED
    engine.dispose()
