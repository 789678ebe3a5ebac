"""Crawl progress on stderr: a live line on a terminal, one line per image elsewhere (cron)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from layerindex.crawl.crawler import ImageOutcome
from layerindex.crawl.job import RunSummary
from layerindex.output import human_size, terminal_text


def image_line(outcome: ImageOutcome) -> str:
    """An image's line, escaped for a terminal (a tag, a platform are a registry's text)."""
    if outcome.unchanged:
        state = "unchanged"
    else:
        state = (
            f"layers: {outcome.indexed} indexed, {outcome.known} known, "
            f"{outcome.skipped} skipped, {outcome.failed} failed"
        )
    return terminal_text(
        f"{outcome.reference}  {outcome.manifest_digest or '-'}  {outcome.platform or '-'}  "
        f"{state}  entries: {outcome.entries}"
    )


class Progress:
    """Receives outcomes from crawler threads; ``quiet`` shows errors only."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = self.stream.isatty() and not quiet
        self.total = 0
        self.done = 0
        self.layers = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def set_total(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()

    def image(self, outcome: ImageOutcome) -> None:
        with self._lock:
            self.done += 1
            self.layers += outcome.indexed + outcome.known + outcome.skipped + outcome.failed
            self.bytes += outcome.bytes
            if self.live:
                self.stream.write("\r\x1b[K")
            if not self.quiet or not outcome.ok:
                if not self.quiet:
                    self.stream.write(image_line(outcome) + "\n")
                for error in outcome.errors:
                    self.stream.write(f"Error: {terminal_text(error)}\n")
            if self.live:
                self.stream.write(self.status())
            self.stream.flush()

    def error(self, message: str) -> None:
        """An error outside any image (a list line whose tags could not be listed)."""
        with self._lock:
            if self.live:
                self.stream.write("\r\x1b[K")
            self.stream.write(f"Error: {message}\n")
            if self.live:
                self.stream.write(self.status())
            self.stream.flush()

    def status(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes / elapsed
        eta = ""
        if self.done and self.total > self.done:
            eta = f", ETA {elapsed / self.done * (self.total - self.done):.0f}s"
        return (
            f"images {self.done}/{self.total}, layers {self.layers}, "
            f"{human_size(self.bytes)} at {human_size(rate)}/s{eta}"
        )

    def summary(self, run: RunSummary) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
        if self.quiet and run.status == "ok":
            return
        t = run.totals
        lists = f", {t.lists_failed} list lines failed" if t.lists_failed else ""
        deferred = ""
        if t.deferred_until is not None:
            until = f"{t.deferred_until:%Y-%m-%d %H:%M:%S}Z"
            deferred = f", {t.images_deferred} in back-off until {until} at the earliest"
        self.stream.write(
            f"run {run.run_id} {run.status} in {run.seconds:.1f}s: {t.images} images "
            f"({t.images_unchanged} unchanged, {t.images_failed} failed){deferred}{lists}, layers "
            f"{t.layers_indexed} indexed, {t.layers_known} known, {t.layers_skipped} skipped, "
            f"{t.layers_failed} failed, {human_size(t.bytes)} downloaded\n"
        )
        self.stream.flush()
