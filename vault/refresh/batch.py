"""Refreshing every due connection at once: ``vault refresh-due`` and "Refresh all expiring".

Any number of runs may go at the same time, on any number of hosts (docs/architecture.md,
"Scale-out"). On PostgreSQL each worker claims one due connection at a time with ``FOR NO
KEY UPDATE SKIP LOCKED`` and keeps that row locked until its refresh is committed, so no two
workers of any run ever hold the same connection. Once committed, a connection is no longer
due: it was refreshed after this run began, it is backing off, or it needs reconnecting.
SQLite allows one writer at a time on one host, so there the run uses a single worker.
Which connections are due is :func:`due_statement`'s answer, built on the one renewability
policy of :mod:`vault.grants`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import Select, and_, func, or_, select

from vault.extensions import db
from vault.grants import GrantProviders, StoredRows, renewable_clause
from vault.models import Connection, Token
from vault.refresh.engine import Actor, Outcome, RefreshEngine, RefreshResult
from vault.tokens.store import token_vault

Progress = Callable[[RefreshResult], None]
StopCheck = Callable[[], bool]


@dataclass
class RefreshSummary:
    """What a batch run did; ``ok`` when nothing failed and nothing needs reconnecting."""

    due: int
    refreshed: int = 0
    skipped: int = 0  # refreshed meanwhile by someone else, or in hand elsewhere
    failed: int = 0
    needs_reconnect: int = 0
    seconds: float = 0.0
    stopped: bool = False  # asked to stop before every due connection was tried
    problems: list[RefreshResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.needs_reconnect == 0

    def add(self, result: RefreshResult) -> None:
        """Count one connection's result."""
        if result.outcome is Outcome.REFRESHED:
            self.refreshed += 1
        elif result.ok:
            self.skipped += 1
        else:
            if result.outcome is Outcome.NEEDS_RECONNECT:
                self.needs_reconnect += 1
            else:
                self.failed += 1
            self.problems.append(result)

    def line(self) -> str:
        """One human line, e.g. for the CLI or a flash message."""
        return (
            f"Refreshed {self.refreshed}, failed {self.failed}, "
            f"needs reconnect {self.needs_reconnect}, skipped {self.skipped} "
            f"({self.due} due, {self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict:
        """JSON-ready form (no secrets: messages are sanitised)."""
        return {
            "due": self.due,
            "refreshed": self.refreshed,
            "skipped": self.skipped,
            "failed": self.failed,
            "needs_reconnect": self.needs_reconnect,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "problems": [
                {
                    "connection_id": result.connection_id,
                    "outcome": result.outcome.value,
                    "message": result.message,
                    "retry_at": result.retry_at.isoformat() if result.retry_at else None,
                }
                for result in self.problems
            ],
        }


def due_statement(within: timedelta | int, now: datetime | None = None) -> Select:
    """Renewable connections whose access token expires within ``within``, soonest first.

    Renewable as :func:`vault.grants.renewable_clause` says; connections backing off
    (``next_refresh_at`` in the future) wait. Soonest expiry first, ties in no set order:
    so ordered, PostgreSQL walks the ``tokens (kind, expires_at)`` index and a ``LIMIT 1``
    claim reads a row or two instead of sorting every due connection.
    """
    if not isinstance(within, timedelta):
        within = timedelta(seconds=within)
    now = now or token_vault.clock()
    connections, tokens = Connection.__table__, Token.__table__
    access = tokens.alias("access")
    statement = select(Connection).join(
        access, and_(access.c.connection_id == Connection.id, access.c.kind == access.name)
    )
    renewable = renewable_clause(
        connections,
        StoredRows.correlated(connections, tokens),
        now=now,
        providers=GrantProviders.of(current_app.extensions["providers"]),
    )
    return (
        statement.where(
            renewable,
            access.c.expires_at <= now + within,
            or_(Connection.next_refresh_at.is_(None), Connection.next_refresh_at <= now),
        )
        .order_by(access.c.expires_at)
    )


def count_due(within: int | None = None) -> int:
    """How many connections are due within ``within`` seconds (default: the buffer)."""
    statement = due_statement(_window(within)).order_by(None)
    return db.session.scalar(select(func.count()).select_from(statement.subquery())) or 0


def refresh_due(
    within: int | None = None,
    concurrency: int = 4,
    *,
    actor: Actor = "system",
    progress: Progress | None = None,
    stop: StopCheck | None = None,
) -> RefreshSummary:
    """Refresh every connection due within ``within`` seconds (default: the refresh buffer).

    ``concurrency`` workers claim due connections one at a time; see the module docstring.
    ``stop`` is asked before each claim: once it says True, each worker finishes the
    connection in hand and claims no other (the worker's SIGTERM).
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # for the workers
    engine: RefreshEngine = app.extensions["refresh_engine"]
    window = _window(within)
    started, timer = token_vault.clock(), time.perf_counter()
    summary = RefreshSummary(due=count_due(within))
    postgres = db.session.get_bind().dialect.name == "postgresql"
    db.session.commit()  # workers use sessions of their own; hold nothing here
    claims = _Claims(window, started, postgres)
    summary_lock = threading.Lock()

    def worker() -> None:
        with app.app_context():
            while not (stop and stop()) and (claimed := claims.next()) is not None:
                # ``claimed`` stays referenced while it is refreshed: the session's identity
                # map holds instances weakly, and the engine's look-up of the claimed row
                # then costs no second SELECT.
                result = _refresh_claimed(engine, claimed.id, window, actor)
                del claimed
                claims.done(result)
                with summary_lock:
                    summary.add(result)
                    if progress is not None:
                        progress(result)

    workers = max(1, concurrency) if postgres else 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refresh") as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    summary.seconds = time.perf_counter() - timer
    summary.stopped = bool(stop and stop())
    return summary


class _Claims:
    """Hands each worker the next due connection, locked for it on PostgreSQL."""

    def __init__(self, window: timedelta, started: datetime, postgres: bool):
        # Built once: "due" is judged as of the run's start, and a connection refreshed
        # since then (by this run or any other) is not due any more.
        statement = (
            due_statement(window, started)
            .where(
                or_(
                    Connection.last_refreshed_at.is_(None),
                    Connection.last_refreshed_at < started,
                )
            )
            .limit(1)
        )
        if postgres:
            # NO KEY UPDATE, like a single refresh's lock (see refresh_rows.lock_row).
            statement = statement.with_for_update(skip_locked=True, of=Connection, key_share=True)
        self.statement: Select = statement
        # Connections this run tried without making them not-due (failed with no back-off,
        # skipped, errors): never claimed twice by one run.
        self.excluded: set[int] = set()
        self.lock = threading.Lock()

    def next(self) -> Connection | None:
        statement = self.statement
        with self.lock:
            excluded = list(self.excluded)
        if excluded:
            statement = statement.where(Connection.id.not_in(excluded))
        return db.session.scalar(statement)

    def done(self, result: RefreshResult) -> None:
        if result.outcome is not Outcome.REFRESHED:
            with self.lock:
                self.excluded.add(result.connection_id)


def _refresh_claimed(
    engine: RefreshEngine, connection_id: int, window: timedelta, actor: Actor
) -> RefreshResult:
    try:
        return engine.run(connection_id, window=window, actor=actor, claimed=True)
    except Exception as error:  # noqa: BLE001 - one bad row must not stop the batch
        current_app.logger.exception("refresh of connection %s failed", connection_id)
        message = f"unexpected error ({type(error).__name__})"
        return RefreshResult(connection_id, Outcome.FAILED, message)
    finally:
        db.session.rollback()  # a skipped claim still holds its row lock


def _window(within: int | None) -> timedelta:
    if within is None:
        within = current_app.config["VAULT_REFRESH_BUFFER_SECONDS"]
    return timedelta(seconds=within)
