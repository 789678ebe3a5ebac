"""An image's layers fetched at once. On SQLite (one writer), a layer that finds the writer busy
is downloaded to a temporary file meanwhile and walked from there when the writer is free."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

import pytest
from faults import FaultProxy
from images import Image, make_image, make_layer
from registry_server import RegistryServer
from sqlalchemy import Engine, func, select

from layerindex import crawler as crawler_module
from layerindex.crawler import Crawler, ImageOutcome
from layerindex.database import open_database
from layerindex.reference import parse_reference
from layerindex.registry import RegistryClient
from layerindex.schema import diffs, dirs, entries, layers, names
from layerindex.store import LayerState, Store, WalkedLayer

CONTENTS = [{f"/layer{n}/file{i}": bytes([n]) * i for i in range(50)} for n in range(3)]
IMAGE = make_image([make_layer(files) for files in CONTENTS])


def force_download_ahead(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The first layer to take the writer waits until another one has been downloaded ahead,
    so that path certainly runs."""
    downloaded = threading.Event()
    real_download = crawler_module.download
    real_index_layer = Store.index_layer
    writers: list[LayerState] = []

    def download(stream: BinaryIO, blob: BinaryIO) -> None:
        real_download(stream, blob)
        downloaded.set()

    def index_layer(self: Store, layer: LayerState, walk: WalkedLayer) -> int:
        if not writers:
            writers.append(layer)
            assert downloaded.wait(30), "no layer was downloaded while another was written"
        return real_index_layer(self, layer, walk)

    monkeypatch.setattr(crawler_module, "download", download)
    monkeypatch.setattr(Store, "index_layer", index_layer)
    return downloaded


def index(engine: Engine, ref: str) -> list[ImageOutcome]:
    return Crawler(RegistryClient(), engine).index(parse_reference(ref))


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


def expected_rows(image: Image) -> set[tuple[str, str, int]]:
    return {
        (layer.digest, path, len(data))
        for layer, files in zip(image.layers, CONTENTS, strict=True)
        for path, data in files.items()
    }


def test_layers_downloaded_while_another_is_written_are_indexed(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.push("team/parallel", "1", IMAGE)
    downloaded = force_download_ahead(monkeypatch)
    engine = open_database(f"sqlite:///{tmp_path / 'index.db'}")
    outcomes = index(engine, f"{registry.host}/team/parallel:1")
    assert [(o.indexed, o.failed, o.errors) for o in outcomes] == [(3, 0, [])]
    assert downloaded.is_set()
    assert outcomes[0].bytes == sum(layer.size for layer in IMAGE.layers)
    assert indexed_rows(engine) == expected_rows(IMAGE)
    engine.dispose()


def test_a_bad_layer_downloaded_ahead_commits_nothing_and_is_retried(
    registry: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.push("team/parallel", "2", IMAGE)
    ref = f"{fault_proxy.host}/team/parallel:2"
    for layer in IMAGE.layers:  # every layer, so the one downloaded ahead is bad too
        fault_proxy.corrupt(f"/blobs/{layer.digest}", times=1)
    with monkeypatch.context() as patch:
        downloaded = force_download_ahead(patch)
        engine = open_database(f"sqlite:///{tmp_path / 'index.db'}")
        (outcome,) = index(engine, ref)
    assert downloaded.is_set()
    assert (outcome.indexed, outcome.failed) == (0, 3)
    for layer in IMAGE.layers:  # each error names its layer (what is wrong depends on the bytes)
        assert any(f"image {ref} layer {layer.digest}: " in e for e in outcome.errors)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(entries)).scalar_one() == 0
    (again,) = index(engine, ref)
    assert (again.indexed, again.failed, again.errors) == (3, 0, [])
    assert indexed_rows(engine) == expected_rows(IMAGE)
    engine.dispose()
