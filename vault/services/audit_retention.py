"""Audit retention: sealed rows past VAULT_AUDIT_RETENTION_DAYS deleted, oldest links first.

Each batch checks the links it deletes (a broken one stops it: evidence is never deleted) and
moves the run's checkpoint on, in one short transaction under the chain's lock, so the rest of
the chain still verifies from where the deleted part ended.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

from flask import current_app
from sqlalchemy import Table, delete
from sqlalchemy.exc import SQLAlchemyError

from vault import audit
from vault.extensions import db
from vault.models import AuditChainCheckpoint, AuditEvent, utcnow
from vault.services.audit_chain import (
    ChainBroken,
    chain_keys,
    check_link,
    checkpoint_mac,
    current_key,
    links_from,
    lock_state,
    resume_point,
)

# Small, so each transaction is short and never holds up sealing (or anything) for long.
RETENTION_BATCH_SIZE = 500
_events = cast(Table, AuditEvent.__table__)


def apply_retention(now: datetime, days: int, batch_size: int = RETENTION_BATCH_SIZE) -> int:
    """Delete sealed rows older than ``days`` (oldest links first), leaving a checkpoint.

    Each batch is checked as it goes: a broken link raises :class:`ChainBroken` and nothing
    from it on is deleted, so retention never destroys the evidence of tampering.
    """
    cutoff = now - timedelta(days=days)
    deleted, checkpoint_id = 0, None
    while True:
        count, checkpoint_id = _retire_batch(cutoff, batch_size, checkpoint_id)
        deleted += count
        if count < batch_size:
            break
    if deleted:
        audit.record("audit.retention", actor="system",
                     detail=f"deleted {deleted} event(s) older than {days} day(s)")
        db.session.commit()
    return deleted


def _retire_batch(
    cutoff: datetime, limit: int, checkpoint_id: int | None
) -> tuple[int, int | None]:
    try:
        lock_state()
        keys = chain_keys()
        previous, expected = resume_point(keys)
        rows = links_from(expected, limit)
        doomed = []
        for row in rows:
            if row.occurred_at >= cutoff:
                break
            previous = check_link(keys, previous, expected, row._mapping)
            expected += 1
            doomed.append(row)
        if not doomed:
            db.session.rollback()
            return 0, checkpoint_id
        db.session.execute(delete(_events).where(_events.c.id.in_([row.id for row in doomed])))
        checkpoint = (db.session.get(AuditChainCheckpoint, checkpoint_id) if checkpoint_id
                      else None) or AuditChainCheckpoint(deleted=0, created_at=utcnow())
        key_id, key = current_key()
        checkpoint.through_seq, checkpoint.through_id = doomed[-1].chain_seq, doomed[-1].id
        checkpoint.through_hash, checkpoint.key_id = previous, key_id
        checkpoint.deleted += len(doomed)
        checkpoint.mac = checkpoint_mac(key, checkpoint)
        db.session.add(checkpoint)
        db.session.commit()
        return len(doomed), checkpoint.id
    except BaseException:
        db.session.rollback()
        raise


def apply_audit_retention(now: datetime) -> bool:
    """Worker job (daily): delete audit rows past VAULT_AUDIT_RETENTION_DAYS, sealed ones only."""
    try:
        apply_retention(now, current_app.config["VAULT_AUDIT_RETENTION_DAYS"])
    except ChainBroken as broken:
        current_app.logger.error("audit retention stopped at a broken link: %s", broken.problem)
        return False
    except SQLAlchemyError:
        current_app.logger.exception("audit retention failed")
        return False
    return True
