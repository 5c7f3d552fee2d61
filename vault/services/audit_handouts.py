"""VAULT_AUDIT_HANDOUTS=hourly: the hours' hand-out counts become audit events when over."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, insert

from vault.extensions import db
from vault.models import AuditEvent, AuditHandoutCount

HOUR = timedelta(hours=1)
# A hand-out counted in the hour's last instant commits a moment later: waiting a minute
# past the hour keeps such stragglers in the hour's one row.
MARGIN = timedelta(minutes=1)
_counts = cast(Table, AuditHandoutCount.__table__)


def fold_handouts(now: datetime) -> int:
    """Turn every hour that is over into audit rows (one per key and connection); how many.

    The counts are taken with DELETE ... RETURNING, so a hand-out committing meanwhile is
    either in the count taken or starts a new row for the next run: none is lost or counted
    twice. Called by the sealer, before it seals.
    """
    try:
        taken = db.session.execute(
            delete(_counts)
            .where(_counts.c.hour <= now - HOUR - MARGIN)
            .returning(_counts.c.actor, _counts.c.connection_id, _counts.c.hour,
                       _counts.c.target, _counts.c.count)
        ).all()
        events = [
            {
                "occurred_at": row.hour,
                "actor": row.actor,
                "action": "token.handed_out",
                "target": row.target,
                "connection_id": row.connection_id,
                "outcome": "success",
                "detail": f"{row.count} hand-out(s) from {row.hour:%Y-%m-%d %H:%M} to "
                          f"{row.hour + HOUR:%H:%M} UTC",
            }
            for row in sorted(taken, key=lambda row: (row.hour, row.actor, row.connection_id))
        ]
        if events:
            db.session.execute(insert(AuditEvent), events)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return len(events)
