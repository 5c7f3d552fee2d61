"""The worker loop: one cycle of jobs every interval (with jitter) until asked to stop.

A cycle runs every job of :func:`vault.worker.jobs.default_jobs` in order, each in an app
context of its own, then writes the worker's heartbeat. Scheduled jobs run only when this
worker wins their claim (:mod:`vault.worker.schedule`). A job that raises is logged and
counted as a failure; the next job still runs. :meth:`Worker.stop` (the CLI's SIGTERM and
SIGINT handler) lets the running job finish its current item; no further job or cycle starts.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flask import Flask

from vault.extensions import db
from vault.tokens.store import token_vault
from vault.worker import heartbeat, schedule
from vault.worker.jobs import Job, default_jobs, job_context

# Each wait between cycles is the interval times a factor drawn from this range, so workers
# started together (a deployment's replicas) drift apart instead of meeting every minute.
JITTER = (0.9, 1.1)


@dataclass
class CycleReport:
    """What one cycle did: per job, whether it went well and its summary line."""

    results: dict[str, tuple[bool, str]] = field(default_factory=dict)
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.results.values())

    def line(self) -> str:
        """One human line for the console and the log."""
        parts = [
            f"{name}: {'ok' if ok else 'FAILED'}{f' ({summary})' if summary else ''}"
            for name, (ok, summary) in self.results.items()
        ]
        return "; ".join(parts) or "nothing ran"


class Worker:
    """One worker process's loop; safe beside any number of others (claims are in the database)."""

    def __init__(
        self,
        app: Flask,
        *,
        interval_seconds: int,
        jobs: Sequence[Job] | None = None,
        worker_id: str | None = None,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ):
        self.app = app
        self.interval_seconds = interval_seconds
        self.jobs = list(default_jobs() if jobs is None else jobs)
        self.worker_id = worker_id or heartbeat.worker_id()
        self.started_at = token_vault.clock()
        self.on_cycle = on_cycle
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish the current item of the running job, then return from :meth:`run`."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, once: bool = False) -> bool:
        """Run cycles until stopped (or one, with ``once``); True when the last cycle was ok."""
        ok = True
        while not self.stopping:
            ok = self.cycle().ok
            if once:
                break
            self._stop.wait(self.interval_seconds * random.uniform(*JITTER))  # noqa: S311
        return ok

    def cycle(self) -> CycleReport:
        """Run every job once (scheduled ones when claimed), with a heartbeat before and after."""
        report = CycleReport()
        self._beat(None)
        for job in self.jobs:
            if self.stopping:
                report.stopped = True
                break
            outcome = self._run_job(job)
            if outcome is not None:
                report.results[job.name] = outcome
        self._beat(report.ok)
        self.app.logger.info("worker %s: %s", self.worker_id, report.line())
        if self.on_cycle is not None:
            self.on_cycle(report)
        return report

    def _beat(self, ok: bool | None) -> None:
        with self.app.app_context():
            try:
                heartbeat.beat(
                    self.worker_id,
                    started_at=self.started_at,
                    now=token_vault.clock(),
                    interval_seconds=self.interval_seconds,
                    ok=ok,
                )
            except Exception:  # noqa: BLE001 - a database outage must not end the worker
                db.session.rollback()
                self.app.logger.exception("worker %s: heartbeat not recorded", self.worker_id)

    def _run_job(self, job: Job) -> tuple[bool, str] | None:
        """Run one job in an app context of its own; None when a scheduled job was not due."""
        with self.app.app_context():
            now, timer, claimed = token_vault.clock(), time.perf_counter(), False
            with job_context(self._stop.is_set) as notes:
                # Exceptions of the claim too (a database outage): the worker lives on and
                # tries again next cycle, rather than taking `make run`'s web server down.
                try:
                    if job.every is not None:
                        claimed = schedule.claim(job, now, self.worker_id)
                        if not claimed:
                            return None
                    ok = bool(job.run(now))
                except Exception as error:  # noqa: BLE001 - one failing job must not stop others
                    db.session.rollback()
                    # The log scrubber (vault.redact) removes credentials from the traceback.
                    self.app.logger.exception("worker job %s failed", job.name)
                    ok = False
                    notes.append(f"error: {type(error).__name__}")
            summary = "; ".join(notes) or f"{time.perf_counter() - timer:.1f} s"
            if claimed:
                try:
                    schedule.record(job, token_vault.clock(), ok, summary)
                except Exception:  # noqa: BLE001 - as above
                    db.session.rollback()
                    self.app.logger.exception("worker job %s: outcome not recorded", job.name)
            return ok, summary
