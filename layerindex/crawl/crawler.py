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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from layerindex.errors import DuplicateRow, LayerIndexError, NoIndex, UnsupportedManifest
from layerindex.index.database import Reader, open_reader, reads_without_sqlalchemy
from layerindex.index.known import StoredImage, failing_layers, images_for, indexed_diff_ids
from layerindex.layer import walkproc
from layerindex.layer.walker import LayerWalker, has_fast_path
from layerindex.layer.walkproc import ChildWalk, walk_download
from layerindex.reference import Reference
from layerindex.registry import manifest
from layerindex.registry.client import CONFIG_MAX_BYTES
from layerindex.registry.platforms import parse_platform
from layerindex.registry.reachability import HostGivenUp
from layerindex.registry.transport import BlobReader

if TYPE_CHECKING:  # SQLAlchemy is imported when the index is first written to, not before
    from concurrent.futures import Executor

    from layerindex.index.store import LayerState, Store, Writer

log = logging.getLogger("layerindex")

LEASE_SECONDS = 300.0  # a killed fetcher's layer is taken over after this
LEASE_WAIT_POLL = 0.5
WALKS_AHEAD = 4  # walker processes started before the index is written to, at most, at once
IMAGE_LAYER_THREADS = WALKS_AHEAD  # layers of one image fetched at once when no pool is given
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
    """What the crawler asks of a registry (a RegistryClient)."""

    def head_manifest(self, ref: Reference) -> str | None: ...
    def get_manifest(self, ref: Reference) -> manifest.FetchedManifest: ...
    def get_blob_bytes(self, ref: Reference, digest: str, max_size: int) -> bytes: ...
    def open_blob(
        self, ref: Reference, digest: str, size: int | None = None
    ) -> AbstractContextManager[BlobReader]: ...
    def abandon_downloads(self) -> None: ...


def layer_where(ref: Reference, digest: str) -> str:
    """How messages name a layer: "image alpine:3.20 layer sha256:…"."""
    return f"image {ref.familiar()} layer {digest}"


class StartedWalk:
    """A layer being walked in a child process since before the index was written to; leaving
    it stops the child (if it still runs) and closes the download."""

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


class WalksAhead:
    """The walks one ``Crawler.index`` call started before writing anything, by layer digest:
    the layer's fetch takes its walk (or the error starting it met); leaving stops the rest."""

    def __init__(self, permits: threading.BoundedSemaphore) -> None:
        self._permits = permits  # the crawler's: WALKS_AHEAD across its threads
        self._walks: dict[str, StartedWalk | LayerIndexError] = {}

    def start(
        self,
        client: Registry,
        ref: Reference,
        layer: manifest.Descriptor,
        diff_id: str,
        *,
        hash_files: bool,
    ) -> bool:
        """Start walking ``layer`` in a child process. False when no more may start: all the
        permits are taken, or the download failed (the error is the layer's fetch's)."""
        if not self._permits.acquire(blocking=False):
            return False
        with contextlib.ExitStack() as stack:
            stack.callback(self._permits.release)  # when the walk is left
            try:
                walk = stack.enter_context(
                    walk_download(
                        client.open_blob(ref, layer.digest, layer.size),
                        digest=layer.digest,
                        diff_id=diff_id,
                        hash_files=hash_files,
                        where=layer_where(ref, layer.digest),
                        in_child=True,
                    )
                )
            except LayerIndexError as exc:  # the blob's request: not to be made twice
                self._walks[layer.digest] = exc
                return False
            assert isinstance(walk, ChildWalk)
            self._walks[layer.digest] = StartedWalk(diff_id, walk, stack.pop_all())
        return True

    def take(self, digest: str, diff_id: str | None) -> StartedWalk | None:
        """The walk started for this layer, if any, now the caller's to leave; raises the
        error its start met."""
        started = self._walks.pop(digest, None)  # one pop: layers are fetched from threads
        if isinstance(started, LayerIndexError):
            raise started
        if started is not None and started.diff_id != diff_id:
            with started:  # recorded with another diff_id: walk it as recorded
                return None
        return started

    def close(self) -> None:
        while self._walks:
            if isinstance(started := self._walks.popitem()[1], StartedWalk):
                with started:
                    pass

    def __enter__(self) -> WalksAhead:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class _Target:
    """A platform image of a reference to index, as the registry described it."""

    image: manifest.ImageManifest | manifest.ImageIndex
    index_digest: str | None
    config_bytes: bytes = b""
    config: manifest.ImageConfig | None = None
    error: LayerIndexError | None = None  # what went wrong fetching it: the image's failure


@dataclass
class _Resolved:
    """What the registry said a reference names, and what the index held of it, before
    anything is written."""

    digest: str | None = None  # the reference's manifest digest (its tag is recorded there)
    targets: list[_Target | list[StoredImage]] = field(default_factory=list)  # or indexed
    error: LayerIndexError | None = None  # what went wrong resolving it: the reference's


class Crawler:
    """Indexes images into the index through ``writer`` (a Writer, or a function opening it).

    Each image is first resolved with the registry and checked against the index through the
    plain DB-API reader (``index.known``), and the walks of its new big layers start at once;
    the Engine (SQLAlchemy: 0.3-0.4 s of one core to import and open, or create) is needed
    only when the image is recorded, so that a function given for it runs beside those walks.
    ``db_url`` lets the index be read before that without SQLAlchemy.
    """

    def __init__(
        self,
        client: Registry,
        writer: Writer | Callable[[], Writer],
        *,
        db_url: str | None = None,
        platform: str = "linux/amd64",
        hash_files: bool = False,
        layer_pool: Executor | None = None,
        respect_backoff: bool = False,
        exclusive: bool = False,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.client = client
        self._writer: Writer | None = None if callable(writer) else writer
        self._open_writer: Callable[[], Writer] | None = writer if callable(writer) else None
        self._opening = threading.Lock()
        self.db_url = db_url
        self.platform = platform
        self.hash_files = hash_files
        self.layer_pool = layer_pool
        self.respect_backoff = respect_backoff
        self.exclusive = exclusive  # the caller holds the crawl lock: stale leases are void
        self.lease_seconds = lease_seconds
        self._ahead = threading.BoundedSemaphore(WALKS_AHEAD)
        self._local = threading.local()
        self._stopping = threading.Event()
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
    def writer(self) -> Writer:
        """The index's writing side, opened the first time it is asked for."""
        return self._writer or self._open()

    def _open(self) -> Writer:
        with self._opening:
            if self._writer is None:
                assert self._open_writer is not None
                self._writer = self._open_writer()
            return self._writer

    @property
    def _one_writer(self) -> bool:
        return self.writer.one_writer

    @property
    def _write_lock(self) -> AbstractContextManager[object]:
        """SQLite has one writer at a time: threads take the writer's turns."""
        return self.writer.turn

    @property
    def store(self) -> Store:
        """A Store per thread: its interning caches belong to one transaction at a time."""
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self.writer.new_store()
        return store

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Reader | None]:
        """The index, to ask what it holds: through the plain DB-API reader (no SQLAlchemy)
        until the Engine is open, then on one of its connections. None: no index yet."""
        reader = None
        if self._writer is None and self.db_url and reads_without_sqlalchemy(self.db_url):
            with contextlib.suppress(NoIndex):  # a new database: nothing is known
                reader = open_reader(self.db_url)
        else:
            reader = Reader.from_engine(self.writer.engine)
        try:
            yield reader
        finally:
            if reader is not None:
                reader.close()

    def index(self, ref: Reference, *, incremental: bool = False) -> list[ImageOutcome]:
        """Index every image ``ref`` names (one per selected platform).

        ``incremental``: first ask with a HEAD (which Docker Hub does not count as a pull) and
        stop there when the digest is one already fully indexed. Image-level errors come back
        as a failed outcome.
        """
        with WalksAhead(self._ahead) as ahead:
            resolved = _Resolved()
            with self._reading() as reader:
                try:
                    self._resolve(reader, ref, resolved, ahead, incremental=incremental)
                except LayerIndexError as exc:
                    resolved.error = exc
            return self._record(ref, resolved, ahead)

    def _resolve(
        self,
        reader: Reader | None,
        ref: Reference,
        resolved: _Resolved,
        ahead: WalksAhead,
        *,
        incremental: bool,
    ) -> None:
        """Ask the registry for the images ``ref`` names and the index which it holds (into
        ``resolved``); start the walks of their new big layers."""
        if incremental:
            digest = ref.digest or self.client.head_manifest(ref)
            if digest is not None and (unchanged := self._unchanged(reader, ref, digest)):
                resolved.digest = digest
                resolved.targets.append(unchanged)
                return
        fetched = self.client.get_manifest(ref)
        parsed = manifest.parse_manifest(fetched)
        resolved.digest = fetched.digest
        if isinstance(parsed, manifest.ImageIndex):
            for child in manifest.select_platforms(parsed, self.platform):
                if (
                    incremental
                    and reader is not None
                    and _complete(
                        known := images_for(reader, ref.registry, ref.repository, child.digest)
                    )
                ):
                    resolved.targets.append(known)  # no request for it
                    continue
                child_manifest = self.client.get_manifest(ref.with_digest(child.digest))
                resolved.targets.append(
                    _Target(manifest.parse_manifest(child_manifest), fetched.digest)
                )
        else:
            resolved.targets.append(_Target(parsed, None))
        targets = [t for t in resolved.targets if isinstance(t, _Target)]
        for target in targets:
            try:
                if not isinstance(target.image, manifest.ImageManifest):
                    raise UnsupportedManifest(
                        f"{ref.familiar()}: index entry {target.image.digest} is itself an index"
                    )
                config_digest = target.image.config.digest
                target.config_bytes = self.client.get_blob_bytes(
                    ref, config_digest, CONFIG_MAX_BYTES
                )
                target.config = manifest.parse_config(
                    target.config_bytes, target.image, where=ref.familiar()
                )
            except LayerIndexError as exc:
                target.error = exc
        self._walk_ahead(reader, ref, targets, ahead)

    def _walk_ahead(
        self, reader: Reader | None, ref: Reference, targets: list[_Target], ahead: WalksAhead
    ) -> None:
        """Start walking the layers of ``walkproc.CHILD_WALK_MIN_BYTES`` or more whose contents
        (diff_id) the index lacks, one walk per diff_id, before anything is written. Only for
        a crawler that holds the crawl lock (``exclusive``): a worker fetches a layer only
        under its lease, which is written in the index."""
        if not self.exclusive or self.stopping:
            return
        wanted: dict[str, manifest.Descriptor] = {}  # by diff_id
        for target in targets:
            if target.config is None:
                continue
            assert isinstance(target.image, manifest.ImageManifest)
            for layer, diff_id in zip(target.image.layers, target.config.diff_ids, strict=True):
                if layer.size >= walkproc.CHILD_WALK_MIN_BYTES and not manifest.is_foreign(layer):
                    wanted.setdefault(diff_id, layer)
        if reader is not None and wanted:
            for diff_id in indexed_diff_ids(reader, list(wanted)):
                del wanted[diff_id]
            if self.respect_backoff:  # a layer left alone for a while is the crawler's to tell
                failing = failing_layers(reader, [layer.digest for layer in wanted.values()])
                wanted = {d: layer for d, layer in wanted.items() if layer.digest not in failing}
        began = 0
        for diff_id, layer in wanted.items():
            if not ahead.start(self.client, ref, layer, diff_id, hash_files=self.hash_files):
                break
            began += 1
        log.debug("%s: %d layers walking before the index is written", ref.familiar(), began)

    def _unchanged(self, reader: Reader | None, ref: Reference, digest: str) -> list[StoredImage]:
        """The images of ``digest``, when every one ``platform`` asks for is fully indexed;
        else []."""
        stored = [] if reader is None else images_for(reader, ref.registry, ref.repository, digest)
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
        return stored if _complete(stored) else []

    def _record(self, ref: Reference, resolved: _Resolved, ahead: WalksAhead) -> list[ImageOutcome]:
        """Write what ``_resolve`` found, and index the new images' layers."""
        # The Writer is opened here if it was not, even for an image that failed: a database
        # that cannot be opened is the run's error, said before any image's.
        self._open()
        try:
            if resolved.digest is not None and ref.tag is not None:
                with self._write_lock:
                    self.store.record_tag(ref.registry, ref.repository, ref.tag, resolved.digest)
            if resolved.error is not None:
                raise resolved.error
        except LayerIndexError as exc:
            not_tried = isinstance(exc, HostGivenUp)
            return [ImageOutcome(reference=ref.familiar(), errors=[str(exc)], not_tried=not_tried)]
        outcomes = []
        for target in resolved.targets:
            if isinstance(target, list):
                outcomes += self._known(ref, target)
                continue
            outcome = ImageOutcome(reference=ref.familiar(), manifest_digest=target.image.digest)
            try:
                if target.error is not None:
                    raise target.error
                self._index_image(ref, target, outcome, ahead)
            except LayerIndexError as exc:
                outcome.errors.append(str(exc))
            outcomes.append(outcome)
        return outcomes

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
        self, ref: Reference, target: _Target, outcome: ImageOutcome, ahead: WalksAhead
    ) -> None:
        from layerindex.index.store import ImageRecord, LayerRecord

        image, config = target.image, target.config
        assert isinstance(image, manifest.ImageManifest) and config is not None
        outcome.platform = config.platform
        with self._write_lock:
            image_id, states = self.store.record_image(
                ImageRecord(
                    registry=ref.registry,
                    repository=ref.repository,
                    digest=image.digest,
                    reference=ref.familiar(),
                    index_digest=target.index_digest,
                    media_type=image.media_type,
                    platform=config.platform,
                    config_digest=image.config.digest,
                    created=config.created,
                    manifest=image.raw.decode("utf-8"),
                    config=target.config_bytes.decode("utf-8"),
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
                self.layer_pool.submit(
                    self._layer, ref, state, ahead, in_child=in_child, at_once=True
                )
                for state, in_child in pending
            ]
            results = [f.result() for f in futures]
        elif len(pending) > 1:
            from concurrent.futures import ThreadPoolExecutor  # 5 ms not spent before the walks

            with ThreadPoolExecutor(
                min(len(pending), IMAGE_LAYER_THREADS), thread_name_prefix="layerindex-layer"
            ) as pool:
                try:
                    results = list(
                        pool.map(
                            lambda p: self._layer(ref, p[0], ahead, in_child=p[1], at_once=True),
                            pending,
                        )
                    )
                except BaseException:  # Ctrl-C: the threads' downloads must not hold it up
                    self.stop()
                    raise
        else:
            results = [
                self._layer(ref, state, ahead, in_child=in_child, at_once=False)
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
        self,
        ref: Reference,
        layer: LayerState,
        ahead: WalksAhead,
        *,
        in_child: bool,
        at_once: bool,
    ) -> _LayerResult:
        """Index one layer, unless its contents are known or another fetcher has it.

        ``in_child``: walk it in a child process; ``at_once``: other layers may be walking at
        the same time; ``ahead``: the walks started before the image was recorded.
        """
        from layerindex.index.store import utcnow

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
                return self._fetch_and_walk(
                    ref, layer, where, ahead, at_once=at_once, in_child=in_child
                )
        finally:
            with self._write_lock:
                store.release_lease(layer, owner)

    def _fetch_and_walk(
        self,
        ref: Reference,
        layer: LayerState,
        where: str,
        ahead: WalksAhead,
        *,
        at_once: bool,
        in_child: bool,
    ) -> _LayerResult:
        store = self.store
        try:
            with self._walk(ref, layer, where, ahead, in_child=in_child) as walked:
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
        self, ref: Reference, layer: LayerState, where: str, ahead: WalksAhead, *, in_child: bool
    ) -> Iterator[LayerWalker | ChildWalk]:
        """The layer's walk: the one started ahead, else a new one (in process: walked while
        written); leaving it stops the walk and closes the download."""
        started = ahead.take(layer.digest, layer.diff_id)
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
