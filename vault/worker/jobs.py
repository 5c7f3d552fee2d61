"""What one worker cycle does: the list of :class:`Job` that :func:`default_jobs` returns.

Adding a job is one line in :func:`default_jobs`. A job's ``run(now)`` is called inside an
app context and returns True when all went well; an exception counts as a failure and the
other jobs still run. ``every=None`` runs the job in every cycle of every worker (it must be
safe to run concurrently, as ``refresh-due`` is); otherwise at most one worker, on any host,
runs it per period, claimed in the database (:mod:`vault.worker.schedule`).

A long job checks :func:`stop_requested` between items, so SIGTERM finishes the current item
and the worker exits; :func:`note` records a one-line summary for the ``worker_jobs`` row and
the log (never a secret).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app

from vault.alerts import rules
from vault.alerts.delivery import deliver_pending, dispatch, prune
from vault.refresh.batch import refresh_due
from vault.services.audit_chain import seal_audit_chain
from vault.services.audit_retention import apply_audit_retention
from vault.services.checks import check_due_credentials
from vault.services.connections import recompute_reconnect_by
from vault.services.device_grants import advance_due_device_grants


@dataclass(frozen=True)
class Job:
    """One thing the worker does: ``run(now)`` returns True when all went well."""

    name: str
    run: Callable[[datetime], bool]
    every: timedelta | None = None  # None: every cycle; else at most once per period


# Set by the runner for the thread running a cycle; read by jobs between items.
_stop_check: ContextVar[Callable[[], bool]] = ContextVar("stop_check", default=lambda: False)
_notes: ContextVar[list[str] | None] = ContextVar("notes", default=None)


def stop_requested() -> bool:
    """True once the worker was asked to stop (SIGTERM, SIGINT): finish the item and return."""
    return _stop_check.get()()


def note(line: str) -> None:
    """Record a one-line summary of the running job (shown in logs and ``worker_jobs``)."""
    notes = _notes.get()
    if notes is not None:
        notes.append(line)


@contextmanager
def job_context(stop_check: Callable[[], bool]) -> Iterator[list[str]]:
    """Run a job with ``stop_check`` behind :func:`stop_requested`; yields its notes."""
    notes: list[str] = []
    stop_token, notes_token = _stop_check.set(stop_check), _notes.set(notes)
    try:
        yield notes
    finally:
        _stop_check.reset(stop_token)
        _notes.reset(notes_token)


def refresh_due_job(now: datetime) -> bool:
    """Refresh every connection due within the refresh buffer (``vault refresh-due``)."""
    # The batch's threads do not inherit this context: hand them the check itself.
    summary = refresh_due(stop=_stop_check.get())
    note(summary.line())
    for problem in summary.problems:
        current_app.logger.warning(
            "worker: connection %s: %s: %s",
            problem.connection_id, problem.outcome.value, problem.message,
        )
    return summary.ok


def alerts_job(now: datetime) -> bool:
    """Evaluate the alert rules, dispatch new alerts, send what is due (vault/alerts)."""
    added = rules.evaluate(now)
    dispatched = dispatch(now)
    report = deliver_pending(now, stop=_stop_check.get())
    note(
        f"alerts: {added} from rules, {dispatched} dispatched, {report.delivered} delivered, "
        f"{report.failed} failed"
    )
    return report.ok


def prune_alerts_job(now: datetime) -> bool:
    """Delete alerts older than 90 days that have nothing left to send."""
    note(f"alerts pruned: {prune(now)}")
    return True


def check_credentials_job(now: datetime) -> bool:
    """Check the stored credentials whose check is due (each claimed by its row)."""
    return check_due_credentials(now)


def recompute_limits_job(now: datetime) -> bool:
    """Recompute every reconnect-by date, so a changed providers file shows within a day."""
    note(f"reconnect-by dates changed: {recompute_reconnect_by(now)}")
    return True


def device_grants_job(now: datetime) -> bool:
    """Poll the provider for every pending device grant that is due (each claimed by its
    row, so every worker may run it), so a grant completes with its page closed; prune."""
    polled, pruned = advance_due_device_grants(now, stop=_stop_check.get())
    note(f"device grants: {polled} polled, {pruned} pruned")
    return True


def default_jobs() -> list[Job]:
    """The jobs of every worker cycle, in order.

    Credential checks run before the alerts, so a key found revoked is alerted in the same
    cycle; so do the deadlines the recomputation moves.
    """
    return [
        Job("refresh-due", refresh_due_job),
        Job("recompute-limits", recompute_limits_job, every=timedelta(days=1)),
        Job("check-credentials", check_credentials_job),
        Job("device-grants", device_grants_job),
        Job("alerts", alerts_job),
        Job("prune-alerts", prune_alerts_job, every=timedelta(days=1)),
        # Audit rows are sealed into the HMAC chain within a minute of being written, and
        # only sealed rows are ever retired (docs/architecture.md, "Audit trail").
        Job("audit-seal", seal_audit_chain, every=timedelta(minutes=1)),
        Job("audit-retention", apply_audit_retention, every=timedelta(days=1)),
    ]
