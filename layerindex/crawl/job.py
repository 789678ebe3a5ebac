"""The scheduled crawl: an image list → targets → incremental indexing, recorded as a run.

One crawl per database at a time (a lock, with a clear message for the second), unless the
crawls are ``--worker``s sharing a PostgreSQL database: those split the targets and layers
between them through leases.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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
from layerindex.index.store import Writer
from layerindex.reference import Reference
from layerindex.registry.client import RegistryClient

log = logging.getLogger("layerindex")


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
        writer: Writer,
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
        self.writer = writer
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
        lock = contextlib.nullcontext() if self.worker else self.writer.crawl_lock(worker_name())
        with lock:
            return self._run(entries)

    def _run(self, entries: list[ListEntry]) -> RunSummary:
        started = time.monotonic()
        self.client.reachability.reset()  # a registry given up last run gets its chance again
        recorder = RunRecorder(self.writer.engine, worker_name())
        owner = f"{worker_name()}:run{recorder.run_id}"
        status = None
        try:
            with (
                ThreadPoolExecutor(self.jobs, thread_name_prefix="layerindex-layer") as layers,
                ThreadPoolExecutor(self.jobs, thread_name_prefix="layerindex-image") as images,
            ):
                crawler = Crawler(
                    self.client,
                    self.writer,
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
                        self.writer.engine,
                        key,
                        owner,
                        seconds=self.lease_seconds,
                        checked_before=recorder.started_at,
                        force=not self.worker,
                    ):
                        # Another worker has it, or it is in back-off: then the run says so.
                        if (until := deferred_until(self.writer.engine, key)) is not None:
                            recorder.deferred(until)
                        return
                    outcomes = crawler.index(ref, incremental=True)
                    if crawler.stopping:
                        return  # interrupted: neither done nor failed
                    target_done(self.writer.engine, key, outcomes, owner)
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
            self.writer.new_store().analyze()
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
