"""Worker heartbeats: one ``worker_heartbeats`` row per worker process, written as each cycle
starts and ends (so a long cycle, thousands of refreshes, does not look like a dead worker).

``/health`` reads the newest (:mod:`vault.queries.health`). A worker that stops leaves its
row, so the page can say when a worker last ran; rows silent for longer than
:data:`PRUNE_AFTER` belong to workers long gone and are deleted by any running worker.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from vault.extensions import db
from vault.models import WorkerHeartbeat

PRUNE_AFTER = timedelta(days=1)


def worker_id() -> str:
    """This process's name among workers: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(
    worker: str,
    *,
    started_at: datetime,
    now: datetime,
    interval_seconds: int,
    ok: bool | None = None,
) -> None:
    """Record that ``worker`` was at work at ``now``; prune dead workers' rows; commit.

    ``ok``: how the cycle that just ended went; None (a cycle starting) keeps the last one's.
    """
    row = db.session.scalar(select(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker))
    if row is None:
        row = WorkerHeartbeat(worker_id=worker, started_at=started_at)
        db.session.add(row)
    row.last_cycle_at = now
    row.interval_seconds = interval_seconds
    if ok is not None:
        row.last_ok = ok
    db.session.execute(
        delete(WorkerHeartbeat).where(WorkerHeartbeat.last_cycle_at < now - PRUNE_AFTER)
    )
    db.session.commit()
