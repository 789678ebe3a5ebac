"""Crawl progress: a live line on a terminal, plain lines for cron, errors only with -q."""

from __future__ import annotations

import io

from layerindex.crawl.crawler import ImageOutcome
from layerindex.crawl.job import RunSummary
from layerindex.crawl.progress import Progress
from layerindex.index.runs import RunTotals


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


GOOD = ImageOutcome(
    "alpine:3.20", "sha256:" + "a" * 64, "linux/amd64", indexed=1, entries=90, bytes=3_000_000
)
BAD = ImageOutcome("app:1", errors=["app:1: manifest unknown"])
SUMMARY = RunSummary(
    7, "failed", RunTotals(images=2, images_failed=1, layers_indexed=1, bytes=3_000_000), 1.5
)


def test_cron_gets_one_line_per_image_and_a_summary() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress.set_total(2)
    progress.image(GOOD)
    progress.image(BAD)
    progress.summary(SUMMARY)
    assert out.getvalue() == (
        f"alpine:3.20  {GOOD.manifest_digest}  linux/amd64  layers: 1 indexed, 0 known, "
        "0 skipped, 0 failed  entries: 90\n"
        "app:1  -  -  layers: 0 indexed, 0 known, 0 skipped, 0 failed  entries: 0\n"
        "Error: app:1: manifest unknown\n"
        "run 7 failed in 1.5s: 2 images (0 unchanged, 1 failed), layers 1 indexed, 0 known, "
        "0 skipped, 0 failed, 3.0 MB downloaded\n"
    )


def test_quiet_prints_errors_only() -> None:
    out = io.StringIO()
    progress = Progress(out, quiet=True)
    progress.image(GOOD)
    progress.image(BAD)
    assert out.getvalue() == "Error: app:1: manifest unknown\n"


def test_terminal_gets_a_live_status_line() -> None:
    out = Terminal()
    progress = Progress(out)
    progress.set_total(3)
    progress.image(GOOD)
    text = out.getvalue()
    assert text.startswith("\r\x1b[Kalpine:3.20  ")
    status = text.rsplit("\n", 1)[1]
    assert status.startswith("images 1/3, layers 1, 3.0 MB at ")
    assert ", ETA " in status
