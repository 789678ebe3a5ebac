"""The indexing job: a reference → its image manifests → their layers → walker → store.

A failure stays with what failed: a bad layer is recorded and the image's other layers go on; a
bad image is reported and the run's other images go on. Nothing of a failed layer is committed.
Layers are fetched under a lease (one fetcher per layer across threads, processes and machines)
and, with a pool, several at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from layerindex.crawl.headstart import WALKS_MAX, HeadStart, layer_where
from layerindex.errors import DuplicateRow, LayerIndexError, UnsupportedManifest
from layerindex.index.store import (
    ImageRecord,
    LayerRecord,
    LayerState,
    Store,
    StoredImage,
    Writer,
    utcnow,
)
from layerindex.layer import walkproc
from layerindex.layer.walker import LayerWalker, has_fast_path
from layerindex.layer.walkproc import ChildWalk, walk_download
from layerindex.reference import Reference
from layerindex.registry import manifest
from layerindex.registry.client import CONFIG_MAX_BYTES
from layerindex.registry.platforms import parse_platform
from layerindex.registry.reachability import HostGivenUp
from layerindex.registry.transport import BlobReader

log = logging.getLogger("layerindex")

LEASE_SECONDS = 300.0  # a killed fetcher's layer is taken over after this
LEASE_WAIT_POLL = 0.5
IMAGE_LAYER_THREADS = WALKS_MAX  # layers of one image fetched at once when no pool is given
BACKOFF_FIRST = dt.timedelta(minutes=1)
BACKOFF_MAX = dt.timedelta(hours=6)


def backoff(failures: int) -> dt.timedelta:
    """How long to leave something alone after ``failures`` failures in a row.

    The next run always retries after a first failure (most are transient); after that the
    wait doubles from a minute up to six hours, so a broken image does not eat every run.
    """
    if failures <= 1:
        return dt.timedelta(0)
    delay: dt.timedelta = BACKOFF_FIRST * 2 ** min(failures - 2, 20)
    return min(BACKOFF_MAX, delay)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: str) -> bool:
    """Whether ``worker`` (a ``worker_name()``) was a process on this machine that has ended;
    False for another machine's, which cannot be told from here."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process
    return False


@dataclass
class ImageOutcome:
    """What indexing one platform image did."""

    reference: str
    manifest_digest: str | None = None
    platform: str | None = None
    indexed: int = 0  # layers downloaded and walked now
    known: int = 0  # layers whose contents were already in the index
    skipped: int = 0  # foreign / non-distributable layers
    failed: int = 0
    entries: int = 0  # entries in the image's layers
    bytes: int = 0  # blob bytes downloaded
    unchanged: bool = False  # a re-crawl found the tag where it was, fully indexed
    errors: list[str] = field(default_factory=list)
    # Failed with nothing asked: its registry had been given up earlier in the run (it is the
    # registry's failure, not the image's, and does not count towards the image's back-off).
    not_tried: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _LayerResult:
    kind: str  # indexed, known, failed
    bytes: int = 0
    error: str | None = None


class Registry(Protocol):
    """What the crawler asks of a registry: a RegistryClient, or a head start's client."""

    def head_manifest(self, ref: Reference) -> str | None: ...
    def get_manifest(self, ref: Reference) -> manifest.FetchedManifest: ...
    def get_blob_bytes(self, ref: Reference, digest: str, max_size: int) -> bytes: ...
    def open_blob(
        self, ref: Reference, digest: str, size: int | None = None
    ) -> AbstractContextManager[BlobReader]: ...
    def abandon_downloads(self) -> None: ...


class Crawler:
    def __init__(
        self,
        client: Registry,
        writer: Writer,
        *,
        platform: str = "linux/amd64",
        hash_files: bool = False,
        layer_pool: Executor | None = None,
        respect_backoff: bool = False,
        exclusive: bool = False,
        lease_seconds: float = LEASE_SECONDS,
        head_start: HeadStart | None = None,
    ) -> None:
        self.client = client
        self.writer = writer
        self.platform = platform
        self.hash_files = hash_files
        self.layer_pool = layer_pool
        self.respect_backoff = respect_backoff
        self.exclusive = exclusive  # the caller holds the crawl lock: stale leases are void
        self.lease_seconds = lease_seconds
        self.head_start = head_start  # layers whose walk began before the database was open
        self._local = threading.local()
        self._stopping = threading.Event()
        # SQLite has one writer at a time: threads take the writer's turns.
        self._one_writer = writer.one_writer
        self._write_lock = writer.turn
        if not has_fast_path():
            log.info(
                "the tar walker's C fast path (layerindex.layer._tarscan) is not built: layers are "
                "read in pure Python, 1.4-1.9x slower; reinstall layerindex where a C compiler "
                "and the Python headers are found to build it"
            )

    def stop(self) -> None:
        """Leave early (Ctrl-C): no layer starts from now on, and the downloads in progress
        end at once. Their layers keep nothing, as ever, and are not counted as failures."""
        self._stopping.set()
        self.client.abandon_downloads()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def store(self) -> Store:
        """A Store per thread: its interning caches belong to one transaction at a time."""
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self.writer.new_store()
        return store

    def index(self, ref: Reference, *, incremental: bool = False) -> list[ImageOutcome]:
        """Index every image ``ref`` names (one per selected platform).

        ``incremental``: first ask with a HEAD (which Docker Hub does not count as a pull) and
        stop there when the digest is one already fully indexed. Image-level errors come back
        as a failed outcome.
        """
        try:
            if incremental and (unchanged := self._unchanged(ref)):
                return unchanged
            fetched = self.client.get_manifest(ref)
            parsed = manifest.parse_manifest(fetched)
            if ref.tag is not None:
                with self._write_lock:
                    self.store.record_tag(ref.registry, ref.repository, ref.tag, fetched.digest)
            # (manifest, index digest) to index, or the outcomes of an image indexed before
            targets_or_known: list[
                tuple[manifest.ImageManifest | manifest.ImageIndex, str | None] | list[ImageOutcome]
            ]
            if isinstance(parsed, manifest.ImageIndex):
                targets_or_known = []
                for child in manifest.select_platforms(parsed, self.platform):
                    if incremental and _complete(
                        known := self.store.images_for(ref.registry, ref.repository, child.digest)
                    ):
                        targets_or_known.append(self._known(ref, known))  # no request for it
                        continue
                    child_manifest = self.client.get_manifest(ref.with_digest(child.digest))
                    targets_or_known.append(
                        (manifest.parse_manifest(child_manifest), fetched.digest)
                    )
            else:
                targets_or_known = [(parsed, None)]
        except LayerIndexError as exc:
            not_tried = isinstance(exc, HostGivenUp)
            return [ImageOutcome(reference=ref.familiar(), errors=[str(exc)], not_tried=not_tried)]
        outcomes = []
        for target in targets_or_known:
            if isinstance(target, list):
                outcomes += target
                continue
            image, index_digest = target
            outcome = ImageOutcome(reference=ref.familiar(), manifest_digest=image.digest)
            try:
                if not isinstance(image, manifest.ImageManifest):
                    raise UnsupportedManifest(
                        f"{ref.familiar()}: index entry {image.digest} is itself an index"
                    )
                self._index_image(ref, image, index_digest, outcome)
            except LayerIndexError as exc:
                outcome.errors.append(str(exc))
            outcomes.append(outcome)
        return outcomes

    def _unchanged(self, ref: Reference) -> list[ImageOutcome]:
        """Outcomes for a reference whose digest is fully indexed already; else []."""
        digest = ref.digest or self.client.head_manifest(ref)
        if digest is None:
            return []
        stored = self.store.images_for(ref.registry, ref.repository, digest)
        if self.platform == "all":
            if any(s.digest != digest for s in stored):
                return []  # an index: only its manifest says whether every platform is here
        else:
            wanted = [parse_platform(p) for p in self.platform.split(",")]
            stored = [
                s for s in stored if any(parse_platform(s.platform).matches(w) for w in wanted)
            ]
            if len(stored) < len(wanted):
                return []
        if not _complete(stored):
            return []
        if ref.tag is not None:
            with self._write_lock:
                self.store.record_tag(ref.registry, ref.repository, ref.tag, digest)
        return self._known(ref, stored)

    def _known(self, ref: Reference, stored: list[StoredImage]) -> list[ImageOutcome]:
        """Outcomes for images indexed completely before, now seen as ``ref``."""
        with self._write_lock:
            self.store.record_reference([s.id for s in stored], ref.familiar())
        return [
            ImageOutcome(
                reference=ref.familiar(),
                manifest_digest=s.digest,
                platform=s.platform,
                known=s.layers,
                entries=self.store.image_entry_count(s.id),
                unchanged=True,
            )
            for s in stored
        ]

    def _index_image(
        self,
        ref: Reference,
        image: manifest.ImageManifest,
        index_digest: str | None,
        outcome: ImageOutcome,
    ) -> None:
        config_bytes = self.client.get_blob_bytes(ref, image.config.digest, CONFIG_MAX_BYTES)
        config = manifest.parse_config(config_bytes, image, where=ref.familiar())
        outcome.platform = config.platform
        with self._write_lock:
            image_id, states = self.store.record_image(
                ImageRecord(
                    registry=ref.registry,
                    repository=ref.repository,
                    digest=image.digest,
                    reference=ref.familiar(),
                    index_digest=index_digest,
                    media_type=image.media_type,
                    platform=config.platform,
                    config_digest=image.config.digest,
                    created=config.created,
                    manifest=image.raw.decode("utf-8"),
                    config=config_bytes.decode("utf-8"),
                    layers=[
                        LayerRecord(d.digest, d.media_type, d.size, diff_id)
                        for d, diff_id in zip(image.layers, config.diff_ids, strict=True)
                    ],
                )
            )
        pending: list[tuple[LayerState, bool]] = []  # with: walk it in a child?
        for descriptor, state in zip(image.layers, states, strict=True):
            if state.indexed:
                outcome.known += 1
            elif reason := manifest.is_foreign(descriptor):
                with self._write_lock:
                    self.store.record_skip(state, reason)
                outcome.skipped += 1
            else:
                pending.append((state, descriptor.size >= walkproc.CHILD_WALK_MIN_BYTES))
        # A layer of walkproc.CHILD_WALK_MIN_BYTES or more is walked in a child process (walkproc):
        # several at once use several cores, and on SQLite only writing them takes turns.
        if self.layer_pool is not None:
            futures = [
                self.layer_pool.submit(self._layer, ref, state, in_child=in_child, at_once=True)
                for state, in_child in pending
            ]
            results = [f.result() for f in futures]
        elif len(pending) > 1:
            with ThreadPoolExecutor(
                min(len(pending), IMAGE_LAYER_THREADS), thread_name_prefix="layerindex-layer"
            ) as pool:
                try:
                    results = list(
                        pool.map(
                            lambda p: self._layer(ref, p[0], in_child=p[1], at_once=True), pending
                        )
                    )
                except BaseException:  # Ctrl-C: the threads' downloads must not hold it up
                    self.stop()
                    raise
        else:
            results = [
                self._layer(ref, state, in_child=in_child, at_once=False)
                for state, in_child in pending
            ]
        for result in results:
            if result.kind == "indexed":
                outcome.indexed += 1
            elif result.kind == "known":
                outcome.known += 1
            else:
                outcome.failed += 1
            outcome.bytes += result.bytes
            if result.error:
                outcome.errors.append(result.error)
        outcome.entries = self.store.image_entry_count(image_id)
        if not outcome.failed:
            with self._write_lock:
                self.store.finish_image(image_id)

    def _layer(
        self, ref: Reference, layer: LayerState, *, in_child: bool, at_once: bool
    ) -> _LayerResult:
        """Index one layer, unless its contents are known or another fetcher has it.

        ``in_child``: walk it in a child process; ``at_once``: other layers may be walking at
        the same time.
        """
        where = layer_where(ref, layer.digest)
        if self.stopping:
            return _LayerResult("failed", error=f"{where}: interrupted")
        if self.respect_backoff and layer.last_error and layer.last_attempt:
            retry_at = layer.last_attempt + backoff(layer.attempts)
            if retry_at > utcnow():
                return _LayerResult(
                    "failed",
                    error=f"{where}: left alone until {retry_at:%Y-%m-%d %H:%M:%S}Z after "
                    f"{layer.attempts} failed attempts; last error: {layer.last_error}",
                )
        store = self.store
        with self._write_lock:
            if store.link_known_diff(layer):
                return _LayerResult("known")
        owner = f"{worker_name()}:{threading.get_ident()}"
        while True:
            with self._write_lock:
                if store.claim_layer(layer, owner, self.lease_seconds, force=self.exclusive):
                    break
            # Someone else is fetching it: wait for them (or for their lease to run out).
            if store.layer_indexed(layer):
                return _LayerResult("known")
            if self.stopping:
                return _LayerResult("failed", error=f"{where}: interrupted")
            time.sleep(LEASE_WAIT_POLL)
        try:
            with self.writer.heartbeat(layer, owner, self.lease_seconds):
                return self._fetch_and_walk(ref, layer, where, at_once=at_once, in_child=in_child)
        finally:
            with self._write_lock:
                store.release_lease(layer, owner)

    def _fetch_and_walk(
        self, ref: Reference, layer: LayerState, where: str, *, at_once: bool, in_child: bool
    ) -> _LayerResult:
        store = self.store
        try:
            with self._walk(ref, layer, where, in_child=in_child) as walked:
                if isinstance(walked, ChildWalk) and at_once and self._one_writer:
                    walked.wait()  # walked to its end before it takes its turn at the writer
                with self._write_lock:
                    count = store.index_layer(layer, walked)
        except DuplicateRow:
            # Another fetcher indexed the same contents (same diff_id) under another digest.
            with self._write_lock:
                if store.link_known_diff(layer):
                    return _LayerResult("known")
            raise
        except LayerIndexError as exc:
            message = str(exc) if where in str(exc) else f"{where}: {exc}"
            if self.stopping:  # its download was abandoned: not the layer's failure
                return _LayerResult("failed", error=f"{where}: interrupted")
            log.info("%s", message)  # the caller reports it
            if isinstance(exc, HostGivenUp):  # not asked for: its registry's failure, not its own
                return _LayerResult("failed", error=message)
            with self._write_lock:
                store.record_failure(layer, message)
            return _LayerResult("failed", error=message)
        log.info("%s: %d entries", where, count)
        return _LayerResult("indexed", bytes=walked.compressed_size)

    @contextlib.contextmanager
    def _walk(
        self, ref: Reference, layer: LayerState, where: str, *, in_child: bool
    ) -> Iterator[LayerWalker | ChildWalk]:
        """The layer's walk: the head start's, else a new one (in process: walked while
        written); leaving it stops the walk and closes the download."""
        started = self.head_start and self.head_start.take(layer.digest, layer.diff_id)
        if started:
            with started as walk:
                yield walk
            return
        with walk_download(
            self.client.open_blob(ref, layer.digest, layer.size),
            digest=layer.digest,
            diff_id=layer.diff_id,
            hash_files=self.hash_files,
            where=where,
            in_child=in_child,
        ) as walk:
            yield walk


def _complete(stored: list[StoredImage]) -> bool:
    """Images found for a digest, every one of them indexed to the end."""
    return bool(stored) and all(s.complete for s in stored)
