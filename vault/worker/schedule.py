"""Scheduled jobs' claims: at most one worker, on any host, runs a job once per period.

Each scheduled job has a ``worker_jobs`` row. A worker claims a run with one conditional
UPDATE (``... SET next_run_at = now + every WHERE name = ? AND next_run_at <= now``): the
database lets exactly one of any number of concurrent workers match it. The next run is set
when the run starts, so a worker that dies mid-run does not make the job run twice; it runs
again one period later.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite

from vault.extensions import db
from vault.models import WorkerJob
from vault.worker.jobs import Job

# A summary longer than this is cut (it is one line for people, not a log).
SUMMARY_LIMIT = 500


def claim(job: Job, now: datetime, worker_id: str) -> bool:
    """Claim ``job``'s run due at ``now`` for this worker, and commit; False: not due, or
    another worker has it."""
    assert job.every is not None, "only scheduled jobs are claimed"
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    # The row appears, due at once, the first time any worker meets the job.
    db.session.execute(
        dialect.insert(WorkerJob)
        .values(name=job.name, next_run_at=now)
        .on_conflict_do_nothing(index_elements=[WorkerJob.name])
    )
    claimed = db.session.execute(
        update(WorkerJob)
        .where(WorkerJob.name == job.name, WorkerJob.next_run_at <= now)
        .values(
            next_run_at=now + job.every,
            last_started_at=now,
            last_worker_id=worker_id,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return claimed.rowcount == 1  # type: ignore[attr-defined]


def record(job: Job, finished_at: datetime, ok: bool, summary: str) -> None:
    """Record how a claimed run ended, and commit."""
    db.session.execute(
        update(WorkerJob)
        .where(WorkerJob.name == job.name)
        .values(last_finished_at=finished_at, last_ok=ok, last_summary=summary[:SUMMARY_LIMIT])
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
