"""Layers walked while another layer is written: spooled to a temporary file, then written."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tarcorpus
from images import compress, make_image, make_layer
from registry_server import RegistryServer
from sqlalchemy import select

from layerindex import crawler as crawler_module
from layerindex.crawler import Crawler
from layerindex.database import open_database
from layerindex.errors import DigestMismatch
from layerindex.reference import parse_reference
from layerindex.registry import RegistryClient
from layerindex.schema import diffs, dirs, entries, layers, names
from layerindex.spool import SPOOL_BATCH, SpooledLayer, spooled
from layerindex.store import LayerState, Store, WalkedLayer
from layerindex.walker import LayerWalker


@pytest.mark.parametrize("name", sorted(tarcorpus.corpus()))
def test_spooled_layer_replays_the_walk(name: str) -> None:
    tar = tarcorpus.corpus()[name]
    walked = LayerWalker(io.BytesIO(compress(tar, "gzip")))
    expected = list(walked)
    with spooled(LayerWalker(io.BytesIO(compress(tar, "gzip")))) as layer:
        assert list(layer) == expected
        assert list(layer) == expected  # read again from the start
        assert (layer.compression, layer.uncompressed_size) == ("gzip", walked.uncompressed_size)


def test_spool_of_several_batches_keeps_order_and_types() -> None:
    files = {f"/data/{i:05d}": b"x" * (i % 3) for i in range(SPOOL_BATCH * 2 + 7)}
    layer = make_layer(files, "zstd")
    expected = list(LayerWalker(io.BytesIO(layer.blob)))
    with spooled(LayerWalker(io.BytesIO(layer.blob))) as replay:
        assert replay.count == len(expected) == len(files)
        assert list(replay) == expected


def test_a_bad_layer_fails_in_the_spool_before_anything_is_written() -> None:
    layer = make_layer({"/bin/x": b"x"})
    walker = LayerWalker(io.BytesIO(layer.blob), digest="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch), spooled(walker):
        pytest.fail("the block runs only after a clean walk")


def test_layers_walked_while_the_writer_is_busy_are_spooled_then_written(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: the first layer to write waits until another layer has walked into a spool,
    so the spool path certainly runs; every layer's entries end up in the index."""
    contents = [{f"/layer{n}/file{i}": bytes([n]) * i for i in range(50)} for n in range(3)]
    image = make_image([make_layer(files) for files in contents])
    registry.push("team/spool", "1", image)
    engine = open_database(f"sqlite:///{tmp_path / 'index.db'}")

    spool_walked = threading.Event()
    real_spooled = crawler_module.spooled
    real_index_layer = Store.index_layer
    writes: list[str] = []

    @contextlib.contextmanager
    def spooled_and_signal(walker: LayerWalker) -> Iterator[SpooledLayer]:
        with real_spooled(walker) as layer:  # the walk happens here, outside the writer
            spool_walked.set()
            yield layer

    def index_layer(self: Store, layer: LayerState, walk: WalkedLayer) -> int:
        if not writes:
            writes.append("first")
            assert spool_walked.wait(30), "no layer walked into the spool while one was writing"
        return real_index_layer(self, layer, walk)

    monkeypatch.setattr(crawler_module, "spooled", spooled_and_signal)
    monkeypatch.setattr(Store, "index_layer", index_layer)
    client = RegistryClient()
    outcomes = Crawler(client, engine).index(parse_reference(f"{registry.host}/team/spool:1"))

    assert [(o.indexed, o.failed, o.errors) for o in outcomes] == [(3, 0, [])]
    assert spool_walked.is_set()
    with engine.connect() as connection:
        rows = connection.execute(
            select(layers.c.digest, dirs.c.path, names.c.name, entries.c.size)
            .join(diffs, diffs.c.id == layers.c.diff_ref)
            .join(entries, entries.c.diff_ref == diffs.c.id)
            .join(dirs, dirs.c.id == entries.c.dir_id)
            .join(names, names.c.id == entries.c.name_id)
        ).all()
    found = {(digest, f"{d}/{n}", size) for digest, d, n, size in rows}
    assert found == {
        (layer.digest, path, len(data))
        for layer, files in zip(image.layers, contents, strict=True)
        for path, data in files.items()
    }
    engine.dispose()
