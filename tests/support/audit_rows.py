"""Audit rows for the audit-trail tests: many at once, and tampering by direct SQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select, text

from vault.extensions import db
from vault.models import AuditEvent, utcnow


def add_events(
    count: int,
    *,
    action: str = "token.handed_out",
    actor: str = "service:billing",
    occurred_at: datetime | None = None,
    step: timedelta = timedelta(seconds=1),
    **fields,
) -> None:
    """Commit ``count`` audit rows (one executemany), ``step`` apart from ``occurred_at``."""
    start = occurred_at or utcnow() - count * step
    rows = [
        {
            "occurred_at": start + number * step,
            "actor": actor,
            "action": action,
            "outcome": "success",
            "detail": f"event {number}",
            **fields,
        }
        for number in range(count)
    ]
    for offset in range(0, count, 10_000):
        db.session.execute(insert(AuditEvent), rows[offset : offset + 10_000])
    db.session.commit()


def sealed_ids() -> list[int]:
    """Row ids in chain order."""
    statement = (
        select(AuditEvent.id).where(AuditEvent.chain_seq.is_not(None)).order_by(AuditEvent.chain_seq)
    )
    return list(db.session.scalars(statement))


def run_sql(statement: str, **params) -> None:
    """Tamper as someone with database access would: plain SQL, committed."""
    db.session.execute(text(statement), params)
    db.session.commit()
    db.session.expire_all()
