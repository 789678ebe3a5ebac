"""The scheduled crawl: an image list → targets → incremental indexing, recorded as a run.

One crawl per database at a time (a lock, with a clear message for the second), unless the
crawls are ``--worker``s sharing a PostgreSQL database: those split the targets and layers
between them through leases.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from layerindex.crawl import imagelist
from layerindex.crawl.crawler import LEASE_SECONDS, Crawler, ImageOutcome, worker_name
from layerindex.crawl.imagelist import ListEntry
from layerindex.errors import CrawlLocked, LayerIndexError
from layerindex.index.runs import (
    RunRecorder,
    RunTotals,
    claim_target,
    deferred_until,
    target_done,
)
from layerindex.index.store import Store
from layerindex.reference import Reference
from layerindex.registry.client import RegistryClient

log = logging.getLogger("layerindex")

ADVISORY_LOCK_KEY = 0x6C61796572  # "layer"


@contextlib.contextmanager
def crawl_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's crawl lock, or fail at once saying who holds it."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        path = Path(database).with_name(Path(database).name + ".lock")
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise CrawlLocked(
                    f"another crawl is running on {database} ({holder}); wait for it to "
                    "finish, or stop it — two crawls on one SQLite database would only queue"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {worker_name()}, since {time.ctime()}\n")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with engine.connect() as connection:
        held = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        ).scalar_one()
        if not held:
            raise CrawlLocked(
                "another crawl is running on this database; wait for it, or run every crawl "
                "with --worker to share the work between them"
            )
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()


@dataclass
class RunSummary:
    run_id: int
    status: str
    totals: RunTotals
    seconds: float


class CrawlJob:
    """One crawl run over an image list; ``run_forever`` repeats it on a schedule."""

    def __init__(
        self,
        engine: Engine,
        client: RegistryClient,
        *,
        platform: str = "linux/amd64",
        hash_files: bool = False,
        jobs: int = 4,
        worker: bool = False,
        lease_seconds: float = LEASE_SECONDS,
        on_image: Callable[[ImageOutcome], None] | None = None,
        on_total: Callable[[int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.platform = platform
        self.hash_files = hash_files
        self.jobs = max(1, jobs)
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.on_image = on_image or (lambda _outcome: None)
        self.on_total = on_total or (lambda _n: None)
        self.on_error = on_error or (lambda _message: None)  # what failed outside an image

    def run(self, entries: list[ListEntry]) -> RunSummary:
        lock = contextlib.nullcontext() if self.worker else crawl_lock(self.engine)
        with lock:
            return self._run(entries)

    def _run(self, entries: list[ListEntry]) -> RunSummary:
        started = time.monotonic()
        self.client.reachability.reset()  # a registry given up last run gets its chance again
        recorder = RunRecorder(self.engine, worker_name())
        owner = f"{worker_name()}:run{recorder.run_id}"
        status = None
        try:
            with (
                ThreadPoolExecutor(self.jobs, thread_name_prefix="layerindex-layer") as layers,
                ThreadPoolExecutor(self.jobs, thread_name_prefix="layerindex-image") as images,
            ):
                crawler = Crawler(
                    self.client,
                    self.engine,
                    platform=self.platform,
                    hash_files=self.hash_files,
                    layer_pool=layers,
                    respect_backoff=True,
                    exclusive=not self.worker,
                    lease_seconds=self.lease_seconds,
                )
                refs = self._expand(entries, recorder)
                self.on_total(len(refs))

                def one(ref: Reference) -> None:
                    key = str(ref)
                    if crawler.stopping:
                        return
                    if not claim_target(
                        self.engine,
                        key,
                        owner,
                        seconds=self.lease_seconds,
                        checked_before=recorder.started_at,
                        force=not self.worker,
                    ):
                        # Another worker has it, or it is in back-off: then the run says so.
                        if (until := deferred_until(self.engine, key)) is not None:
                            recorder.deferred(until)
                        return
                    outcomes = crawler.index(ref, incremental=True)
                    if crawler.stopping:
                        return  # interrupted: neither done nor failed
                    target_done(self.engine, key, outcomes, owner)
                    for outcome in outcomes:
                        recorder.add(outcome)
                        self.on_image(outcome)

                try:
                    for future in [images.submit(one, ref) for ref in refs]:
                        future.result()
                except BaseException:  # Ctrl-C: no queued image starts, no download holds it up
                    crawler.stop()
                    images.shutdown(wait=False, cancel_futures=True)
                    layers.shutdown(wait=False, cancel_futures=True)
                    raise
            Store(self.engine).analyze()
        except BaseException:
            status = "interrupted"
            raise
        finally:
            status = recorder.finish(status)
        return RunSummary(recorder.run_id, status, recorder.totals, time.monotonic() - started)

    def _expand(self, entries: list[ListEntry], recorder: RunRecorder) -> list[Reference]:
        refs: list[Reference] = []
        for entry in entries:
            try:
                refs.extend(imagelist.expand(entry, self.client.list_tags))
            except LayerIndexError as exc:
                message = f"{entry.text}: cannot list tags: {exc}"
                recorder.list_failed(entry.text, message)
                self.on_error(message)
        return list(dict.fromkeys(refs))  # a reference named twice is crawled once

    def run_forever(
        self,
        load: Callable[[], list[ListEntry]],
        every: float,
        *,
        max_runs: int | None = None,
        on_run: Callable[[RunSummary], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Crawl, sleep ``every`` seconds (±10 % jitter), again; transient errors don't stop it."""
        stop = stop or threading.Event()
        done = 0
        while max_runs is None or done < max_runs:
            try:
                summary = self.run(load())
                if on_run:
                    on_run(summary)
            except CrawlLocked:
                raise
            except Exception as exc:  # a scheduled job survives anything one run throws
                log.error("crawl run failed: %s", exc)
            done += 1
            if max_runs is not None and done >= max_runs:
                break
            if stop.wait(every * random.uniform(0.9, 1.1)):
                break
