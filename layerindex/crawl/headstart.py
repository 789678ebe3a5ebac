"""A head start for ``layerindex index``: the first image's big layers begin walking before the
database is opened.

Opening the index costs ``index`` 0.3-0.4 s of one core before any blob byte arrives: importing
SQLAlchemy and the schema, then opening (or creating) the database. The first image's download
needs none of it, except the answers to "is this indexed already?", and those are read here
through the DB-API reader ``find`` uses (stdlib sqlite3 or psycopg: no SQLAlchemy). So, before
the Engine is made, ``begin``:

1. asks for the reference's digest with a HEAD, as the crawler's incremental check does, and
   stops there if the index holds that digest at all: the crawler then decides as it always has;
2. fetches the manifest (and, for an image index, the selected platforms' manifests that the
   index does not hold) and each image's config;
3. starts a walker process (walkproc) on each layer of ``CHILD_WALK_MIN_BYTES`` or more whose
   diff_id the index does not hold (one per diff_id), at most ``WALKS_MAX``.

The crawler then runs as ever, through ``client``: what ``begin`` fetched is given to it once
each, not asked for again, so a run makes the same requests with a head start as without. For
a layer it claims, the crawler takes the walk started here; walks it leaves (a layer another
process indexed meanwhile) are stopped on ``close``. Any problem ends the head start quietly:
the crawler meets it again and reports it where it would have.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import TypeVar, cast

from layerindex.errors import LayerIndexError, NoIndex
from layerindex.index.database import Reader, among, open_reader, reads_without_sqlalchemy
from layerindex.layer import walkproc
from layerindex.layer.walkproc import ChildWalk, walk_download
from layerindex.reference import Reference
from layerindex.registry import manifest
from layerindex.registry.client import CONFIG_MAX_BYTES, RegistryClient
from layerindex.registry.transport import BlobReader

log = logging.getLogger("layerindex")

T = TypeVar("T")
_ASK = object()  # no answer kept: ask the registry

WALKS_MAX = 4  # walker processes started ahead, as many as the crawler walks at once


def layer_where(ref: Reference, digest: str) -> str:
    """How messages name a layer: "image alpine:3.20 layer sha256:…"."""
    return f"image {ref.familiar()} layer {digest}"


class ReplayingClient:
    """A registry client that gives each answer ``fetch`` got (an error too) once, before
    asking the registry."""

    def __init__(self, client: RegistryClient) -> None:
        self.upstream = client
        self._answers: dict[tuple[object, ...], object] = {}

    def fetch(self, key: tuple[object, ...], call: Callable[[], T]) -> T:
        """``call()``, its answer or error kept for the first call ``key`` names: ("head" or
        "manifest", ref), ("config", ref, digest) or ("blob", ref, digest)."""
        try:
            answer = call()
        except LayerIndexError as exc:
            self.failed(key, exc)
            raise
        self._answers[key] = answer
        return answer

    def failed(self, key: tuple[object, ...], error: LayerIndexError) -> None:
        """Keep ``error`` to raise at the first call ``key`` names."""
        self._answers[key] = error

    def _answer(self, key: tuple[object, ...], call: Callable[[], T]) -> T:
        answer = self._answers.pop(key, _ASK)  # one pop: layers are opened from threads
        if answer is _ASK:
            return call()
        if isinstance(answer, LayerIndexError):
            raise answer
        return cast(T, answer)

    def head_manifest(self, ref: Reference) -> str | None:
        return self._answer(("head", ref), partial(self.upstream.head_manifest, ref))

    def get_manifest(self, ref: Reference) -> manifest.FetchedManifest:
        return self._answer(("manifest", ref), partial(self.upstream.get_manifest, ref))

    def get_blob_bytes(self, ref: Reference, digest: str, max_size: int) -> bytes:
        call = partial(self.upstream.get_blob_bytes, ref, digest, max_size)
        return self._answer(("config", ref, digest), call)

    def open_blob(
        self, ref: Reference, digest: str, size: int | None = None
    ) -> AbstractContextManager[BlobReader]:
        # Only a failure is kept for a blob: a started download belongs to its walk.
        call = partial(self.upstream.open_blob, ref, digest, size)
        return self._answer(("blob", ref, digest), call)

    def abandon_downloads(self) -> None:
        self.upstream.abandon_downloads()


class StartedWalk:
    """A layer being walked in a child process since the head start; leaving it stops the
    child (if it still runs) and closes the download."""

    def __init__(self, diff_id: str, walk: ChildWalk, stack: contextlib.ExitStack) -> None:
        self.diff_id = diff_id
        self.walk = walk
        self._stack = stack

    def __enter__(self) -> ChildWalk:
        return self.walk

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()


class HeadStart:
    """See the module docstring. Use as a context manager: leaving it stops what was not taken."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = ReplayingClient(client)
        self._walks: dict[str, StartedWalk] = {}

    def begin(self, db_url: str, ref: Reference, platform: str, *, hash_files: bool) -> None:
        """Start walking the new big layers of ``ref``'s images; nothing, on any problem."""
        try:
            if not reads_without_sqlalchemy(db_url):
                return  # opening it is SQLAlchemy's (and then there is no head start to have)
            try:
                reader = open_reader(db_url)
            except NoIndex:
                self._begin(None, ref, platform, hash_files)  # nothing is indexed yet
            else:
                with reader:
                    self._begin(reader, ref, platform, hash_files)
        except LayerIndexError as exc:  # the crawler will meet it, and say it where it belongs
            log.debug("no head start for %s: %s", ref.familiar(), exc)
        if self._walks:
            log.debug("head start: walking %d layers of %s", len(self._walks), ref.familiar())

    def _begin(
        self, reader: Reader | None, ref: Reference, platform: str, hash_files: bool
    ) -> None:
        client, upstream = self.client, self.client.upstream
        digest = ref.digest or client.fetch(("head", ref), partial(upstream.head_manifest, ref))
        if digest is not None and (
            _held(reader, "images", "digest", [digest])
            or _held(reader, "images", "index_digest", [digest])
        ):
            return  # seen before: whether anything is to fetch is the crawler's question
        parsed = manifest.parse_manifest(
            client.fetch(("manifest", ref), partial(upstream.get_manifest, ref))
        )
        images = []
        if isinstance(parsed, manifest.ImageIndex):
            chosen = [d.digest for d in manifest.select_platforms(parsed, platform)]
            for child_digest in sorted(set(chosen) - _held(reader, "images", "digest", chosen)):
                child = ref.with_digest(child_digest)
                fetched = client.fetch(("manifest", child), partial(upstream.get_manifest, child))
                images.append(manifest.parse_manifest(fetched))
        else:
            images.append(parsed)
        wanted: dict[str, manifest.Descriptor] = {}  # by diff_id: one walk per contents
        for image in images:
            if not isinstance(image, manifest.ImageManifest):
                continue  # an index inside an index: the crawler says what is wrong
            config_digest = image.config.digest
            body = client.fetch(
                ("config", ref, config_digest),
                partial(upstream.get_blob_bytes, ref, config_digest, CONFIG_MAX_BYTES),
            )
            config = manifest.parse_config(body, image, where=ref.familiar())
            for layer, diff_id in zip(image.layers, config.diff_ids, strict=True):
                if layer.size >= walkproc.CHILD_WALK_MIN_BYTES and not manifest.is_foreign(layer):
                    wanted.setdefault(diff_id, layer)
        known = _held(reader, "diffs", "diff_id", list(wanted))
        for diff_id in [d for d in wanted if d not in known][:WALKS_MAX]:
            layer = wanted[diff_id]
            self._start(ref, layer.digest, diff_id, hash_files, layer.size)

    def _start(
        self, ref: Reference, digest: str, diff_id: str, hash_files: bool, size: int
    ) -> None:
        with contextlib.ExitStack() as stack:
            download = self.client.upstream.open_blob(ref, digest, size)
            try:
                walk = stack.enter_context(
                    walk_download(
                        download,
                        digest=digest,
                        diff_id=diff_id,
                        hash_files=hash_files,
                        where=layer_where(ref, digest),
                        in_child=True,
                    )
                )
            except LayerIndexError as exc:  # the blob's request: the crawler will meet it
                self.client.failed(("blob", ref, digest), exc)
                raise
            assert isinstance(walk, ChildWalk)
            self._walks[digest] = StartedWalk(diff_id, walk, stack.pop_all())

    def take(self, digest: str, diff_id: str | None) -> StartedWalk | None:
        """The walk started for this layer, if any, now the caller's to leave."""
        started = self._walks.pop(digest, None)
        if started is not None and started.diff_id != diff_id:
            with started:  # recorded with another diff_id: walk it as recorded
                return None
        return started

    def close(self) -> None:
        while self._walks:
            with self._walks.popitem()[1]:
                pass

    def __enter__(self) -> HeadStart:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _held(reader: Reader | None, table: str, column: str, values: list[str]) -> set[str]:
    """Which of ``values`` the index holds in ``table.column``."""
    if reader is None or not values:
        return set()
    where, params = among(reader.dialect, column, values)
    return {row[0] for row in reader.rows(f"SELECT {column} FROM {table} WHERE {where}", params)}
