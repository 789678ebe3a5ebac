"""What scheduled crawls record: the runs, and each target's last check, failures and lease
(``history.list_runs`` reads the runs)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, true, update

from layerindex.crawl.crawler import ImageOutcome, backoff, worker_gone
from layerindex.index.database import aware_utc
from layerindex.index.schema import runs, targets
from layerindex.index.store import dialect_insert, utcnow


@dataclass
class RunTotals:
    images: int = 0
    images_unchanged: int = 0
    images_failed: int = 0
    layers_indexed: int = 0
    layers_known: int = 0
    layers_skipped: int = 0
    layers_failed: int = 0
    bytes: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    images_deferred: int = 0  # not checked: waiting out their back-off
    deferred_until: dt.datetime | None = None  # the first of them to be due again
    lists_failed: int = 0  # list lines whose tags could not be listed (not images)


class RunRecorder:
    """One row in ``runs``, kept up to date as images finish (thread-safe)."""

    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self.totals = RunTotals()
        self.started_at = utcnow()
        self._lock = threading.Lock()
        with engine.begin() as connection:
            _mark_killed_runs(connection)
            self.run_id = connection.execute(
                insert(runs)
                .values(
                    status="running", worker=worker, started_at=self.started_at, **self._counts()
                )
                .returning(runs.c.id)
            ).scalar_one()

    def _counts(self) -> dict[str, Any]:
        values = asdict(self.totals)
        values["errors"] = json.dumps(values["errors"]) if values["errors"] else None
        return values

    def add(self, outcome: ImageOutcome) -> None:
        with self._lock:
            t = self.totals
            t.images += 1
            t.images_unchanged += outcome.unchanged
            t.images_failed += not outcome.ok
            t.layers_indexed += outcome.indexed
            t.layers_known += outcome.known
            t.layers_skipped += outcome.skipped
            t.layers_failed += outcome.failed
            t.bytes += outcome.bytes
            t.errors.extend({"image": outcome.reference, "error": e} for e in outcome.errors)
            self._save()

    def list_failed(self, line: str, message: str) -> None:
        """A list line stood for no image: its tags could not be listed."""
        with self._lock:
            self.totals.lists_failed += 1
            self.totals.errors.append({"image": line, "error": message})
            self._save()

    def deferred(self, until: dt.datetime) -> None:
        """An image left alone by this run: its back-off lasts until ``until``."""
        with self._lock:
            t = self.totals
            t.images_deferred += 1
            t.deferred_until = until if t.deferred_until is None else min(t.deferred_until, until)
            self._save()

    def finish(self, status: str | None = None) -> str:
        with self._lock:
            failed = self.totals.images_failed or self.totals.lists_failed
            status = status or ("failed" if failed else "ok")
            self._save(status=status, finished_at=utcnow())
        return status

    def _save(self, **extra: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(runs).where(runs.c.id == self.run_id).values(**self._counts(), **extra)
            )


def _mark_killed_runs(connection: Connection) -> None:
    """Runs left "running" by a crawl on this machine whose process is gone (SIGKILL, the OOM
    killer, a power cut): "killed", ended now, rather than running for ever in ``runs``."""
    rows = connection.execute(select(runs.c.id, runs.c.worker).where(runs.c.status == "running"))
    for run_id, worker in rows.all():
        if worker_gone(worker):
            connection.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == "running")
                .values(status="killed", finished_at=utcnow())
            )


def claim_target(
    engine: Engine,
    reference: str,
    owner: str,
    *,
    seconds: float,
    checked_before: dt.datetime,
    force: bool = False,
) -> bool:
    """Take ``reference`` for this run: not leased by a live worker, not checked since
    ``checked_before`` (the run's start) and not in back-off after failures. ``force``
    ignores leases: a crawl holding the crawl lock knows their holders are gone."""
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            dialect_insert(connection, targets)
            .values(reference=reference, failures=0)
            .on_conflict_do_nothing()
        )
        result = connection.execute(
            update(targets)
            .where(
                targets.c.reference == reference,
                true()
                if force
                else targets.c.lease_until.is_(None) | (targets.c.lease_until < now),
                targets.c.last_checked.is_(None) | (targets.c.last_checked < checked_before),
                targets.c.next_attempt.is_(None) | (targets.c.next_attempt <= now),
            )
            .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=seconds))
        )
    return result.rowcount == 1


def deferred_until(engine: Engine, reference: str) -> dt.datetime | None:
    """When ``reference``'s back-off after failures ends, if it has not ended yet."""
    with engine.connect() as connection:
        until = aware_utc(
            connection.execute(
                select(targets.c.next_attempt).where(targets.c.reference == reference)
            ).scalar_one_or_none()
        )
    return until if until is not None and until > utcnow() else None


def target_done(engine: Engine, reference: str, outcomes: list[ImageOutcome], owner: str) -> None:
    """Record the check: success resets the back-off, a failure grows it (unless nothing was
    tried: its registry had been given up in this run, and the next run tries it again)."""
    now = utcnow()
    errors = [e for o in outcomes for e in o.errors]
    digest = next((o.manifest_digest for o in outcomes if o.manifest_digest), None)
    with engine.begin() as connection:
        failures = connection.execute(
            select(targets.c.failures).where(targets.c.reference == reference)
        ).scalar_one()
        values: dict[str, Any] = {"last_checked": now, "lease_owner": None, "lease_until": None}
        if errors and all(o.not_tried for o in outcomes):
            values["last_error"] = errors[0]
        elif errors:
            failures += 1
            values |= {
                "failures": failures,
                "last_error": errors[0],
                "next_attempt": now + backoff(failures),
            }
        else:
            values |= {"failures": 0, "last_error": None, "next_attempt": None}
        if digest:
            values["last_digest"] = digest
        connection.execute(
            update(targets)
            .where(targets.c.reference == reference, targets.c.lease_owner == owner)
            .values(**values)
        )
