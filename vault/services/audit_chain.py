"""The audit trail's tamper-evident chain: sealing, verification and retention.

Rows are written as ever (``vault.audit``), unsealed. The sealer then links them, in id order,
each under the next ``chain_seq``::

    chain_mac = HMAC-SHA256(key, previous link's chain_mac || canonical(row))

with ``key`` derived from ENCRYPTION_SECRET under its own label (``vault.crypto``) and its
key id kept on the row, so links sealed before a key rotation still verify while the retired
secret stays in ENCRYPTION_SECRET_PREVIOUS. The chain's order is ``chain_seq``, handed out at
sealing time, not the id: on PostgreSQL a transaction may commit a lower id after a higher
one was sealed, and such a late row is simply sealed by the next run, at the end of the chain.
So no row is ever skipped and no time margin is needed.

Sealers and the retention job first lock the one ``audit_chain_state`` row (an UPDATE, which
takes a row lock on PostgreSQL and the write lock on SQLite), so the chain never forks; the
unique ``chain_seq`` refuses a fork even if that were bypassed. Retention deletes the oldest
links only, checking them as it goes, and leaves an authenticated checkpoint (the last
deleted link's MAC) where verification resumes.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from flask import current_app
from sqlalchemy import CursorResult, Table, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vault import audit
from vault.crypto import AUDIT_CHAIN_LABEL
from vault.extensions import db
from vault.models import AuditChainCheckpoint, AuditChainState, AuditEvent, utcnow
from vault.tokens.store import token_vault

BATCH_SIZE = 1000
# Small, so each retention transaction is short and never holds up the token API for long.
RETENTION_BATCH_SIZE = 500
GENESIS_MAC = bytes(32)
STATE_ID = 1

_events = cast(Table, AuditEvent.__table__)
# The link itself; every other column (present or added later) is the row's sealed content.
_LINK_COLUMNS = frozenset({"chain_mac", "chain_key_id"})


class ChainBroken(Exception):
    """A link does not verify; ``row_id`` is the first broken row (None: not a row)."""

    def __init__(self, row_id: int | None, problem: str) -> None:
        super().__init__(problem)
        self.row_id, self.problem = row_id, problem


@dataclass(frozen=True)
class SealResult:
    """What one sealing run did, and the chain's head after it (for operators to anchor)."""

    sealed: int
    head_seq: int
    head_id: int | None
    head_mac: bytes | None


@dataclass(frozen=True)
class Verification:
    """The outcome of walking the chain (also stored on the chain state for ``/audit``)."""

    ok: bool
    verified: int
    through_seq: int
    through_id: int | None
    broken_id: int | None
    problem: str | None
    unsealed: int


def canonical(row: Mapping[Any, Any]) -> bytes:
    """The row's content as sealed: sorted JSON of its non-NULL columns, times in UTC.

    NULLs are left out, so a nullable column added later does not change old rows' MACs.
    """
    fields = {}
    for name, value in row.items():
        if value is None or name in _LINK_COLUMNS:
            continue
        if isinstance(value, datetime):
            value = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
        fields[name] = value
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link_mac(key: bytes, previous: bytes, row: Mapping[Any, Any]) -> bytes:
    """The MAC binding ``row`` (with its ``chain_seq``) to the link before it."""
    return hmac.digest(key, previous + canonical(row), "sha256")


def seal(batch_size: int = BATCH_SIZE) -> SealResult:
    """Seal every unsealed audit row, in id order, in transactions of ``batch_size`` rows."""
    sealed = 0
    while True:
        count, state = _seal_batch(batch_size)
        sealed += count
        if count < batch_size:
            return SealResult(sealed, state.head_seq, state.head_id, state.head_mac)


def _seal_batch(limit: int) -> tuple[int, AuditChainState]:
    try:
        state = _lock_state()
        rows = db.session.execute(
            select(_events).where(_events.c.chain_seq.is_(None)).order_by(_events.c.id).limit(limit)
        ).all()
        key_id, key = _current_key()
        previous, seq, links = state.head_mac or GENESIS_MAC, state.head_seq, []
        for row in rows:
            seq += 1
            previous = link_mac(key, previous, {**row._mapping, "chain_seq": seq})
            links.append({"row_id": row.id, "seq": seq, "mac": previous, "kid": key_id})
        if links:
            db.session.execute(
                update(_events)
                .where(_events.c.id == bindparam("row_id"))
                .values(chain_seq=bindparam("seq"), chain_mac=bindparam("mac"),
                        chain_key_id=bindparam("kid")),
                links,
            )
            state.head_seq, state.head_mac = seq, previous
            state.head_id, state.sealed_at = links[-1]["row_id"], utcnow()
        db.session.commit()
        return len(links), state
    except BaseException:
        db.session.rollback()
        raise


def verify(
    batch_size: int = BATCH_SIZE, progress: Callable[[int], None] | None = None
) -> Verification:
    """Walk the whole chain in batches; stop at the first broken link. Stores the outcome."""
    keys = dict(token_vault.cipher.purpose_keys(AUDIT_CHAIN_LABEL))
    state = db.session.get(AuditChainState, STATE_ID, populate_existing=True)
    head_seq = state.head_seq if state is not None else 0
    verified, last_seq, last_id = 0, 0, None
    try:
        previous, expected = _resume_point(keys)
        last_seq = expected - 1
        while True:
            rows = db.session.execute(
                select(_events)
                .where(_events.c.chain_seq >= expected)
                .order_by(_events.c.chain_seq)
                .limit(batch_size)
            ).all()
            for row in rows:
                previous = _check_link(keys, previous, expected, row._mapping)
                expected, verified = expected + 1, verified + 1
                last_seq, last_id = row.chain_seq, row.id
            if progress is not None:
                progress(len(rows))
            if len(rows) < batch_size:
                break
        if last_seq < head_seq:
            raise ChainBroken(None, f"the chain ends at link {last_seq} but was sealed up to link "
                                    f"{head_seq}: the newest sealed rows were deleted")
        result = Verification(True, verified, last_seq, last_id, None, None, _unsealed())
    except ChainBroken as broken:
        result = Verification(False, verified, last_seq, last_id, broken.row_id, broken.problem,
                              _unsealed())
    _store(result)
    return result


def _resume_point(keys: Mapping[str, bytes]) -> tuple[bytes, int]:
    # Where the chain starts: its genesis, or the newest checkpoint left by retention.
    checkpoint = db.session.scalars(
        select(AuditChainCheckpoint).order_by(AuditChainCheckpoint.through_seq.desc()).limit(1)
    ).first()
    if checkpoint is None:
        return GENESIS_MAC, 1
    key = keys.get(checkpoint.key_id)
    if key is None or not hmac.compare_digest(checkpoint.mac, _checkpoint_mac(key, checkpoint)):
        raise ChainBroken(None, f"retention checkpoint #{checkpoint.id} is not authentic "
                                "(forged or edited, or its key is no longer in the key ring)")
    stray = db.session.scalar(
        select(_events.c.id).where(_events.c.chain_seq <= checkpoint.through_seq).limit(1)
    )
    if stray is not None:
        raise ChainBroken(stray, f"row #{stray} sits before the retention checkpoint at link "
                                 f"{checkpoint.through_seq}: it was inserted")
    return bytes(checkpoint.through_mac), checkpoint.through_seq + 1


def _check_link(
    keys: Mapping[str, bytes], previous: bytes, expected: int, row: Mapping[Any, Any]
) -> bytes:
    # One link checked, by verification and by retention alike; returns its MAC.
    row_id = row["id"]
    if row["chain_seq"] != expected:
        raise ChainBroken(row_id, f"row #{row_id} is link {row['chain_seq']} where link "
                                  f"{expected} was expected: sealed rows before it were deleted")
    key = keys.get(row["chain_key_id"] or "")
    if key is None:
        raise ChainBroken(row_id, f"row #{row_id} was sealed with key {row['chain_key_id']}, "
                                  "which is not in the key ring (ENCRYPTION_SECRET_PREVIOUS)")
    stored = bytes(row["chain_mac"] or b"")
    if not hmac.compare_digest(stored, link_mac(key, previous, row)):
        raise ChainBroken(row_id, f"row #{row_id} does not match its seal: it was edited, or "
                                  "inserted, or rows before it were reordered")
    return stored


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
        _lock_state()
        keys = dict(token_vault.cipher.purpose_keys(AUDIT_CHAIN_LABEL))
        previous, expected = _resume_point(keys)
        rows = db.session.execute(
            select(_events).where(_events.c.chain_seq >= expected)
            .order_by(_events.c.chain_seq).limit(limit)
        ).all()
        doomed = []
        for row in rows:
            if row.occurred_at >= cutoff:
                break
            previous = _check_link(keys, previous, expected, row._mapping)
            expected += 1
            doomed.append(row)
        if not doomed:
            db.session.rollback()
            return 0, checkpoint_id
        db.session.execute(delete(_events).where(_events.c.id.in_([row.id for row in doomed])))
        checkpoint = (db.session.get(AuditChainCheckpoint, checkpoint_id) if checkpoint_id
                      else None) or AuditChainCheckpoint(deleted=0, created_at=utcnow())
        key_id, key = _current_key()
        checkpoint.through_seq, checkpoint.through_id = doomed[-1].chain_seq, doomed[-1].id
        checkpoint.through_mac, checkpoint.key_id = previous, key_id
        checkpoint.deleted += len(doomed)
        checkpoint.mac = _checkpoint_mac(key, checkpoint)
        db.session.add(checkpoint)
        db.session.commit()
        return len(doomed), checkpoint.id
    except BaseException:
        db.session.rollback()
        raise


def _checkpoint_mac(key: bytes, checkpoint: AuditChainCheckpoint) -> bytes:
    fields = {
        "checkpoint": checkpoint.through_seq,
        "row": checkpoint.through_id,
        "mac": bytes(checkpoint.through_mac).hex(),
    }
    return hmac.digest(key, json.dumps(fields, sort_keys=True).encode(), "sha256")


def chain_state() -> AuditChainState | None:
    """The chain's head and last verification, or None before anything was sealed."""
    return db.session.get(AuditChainState, STATE_ID)


def seal_audit_chain(now: datetime) -> bool:
    """Worker job (every minute): seal the rows written since the last run."""
    try:
        seal()
    except SQLAlchemyError:
        current_app.logger.exception("sealing the audit chain failed")
        return False
    return True


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


def _current_key() -> tuple[str, bytes]:
    return token_vault.cipher.purpose_keys(AUDIT_CHAIN_LABEL)[0]


def _lock_state() -> AuditChainState:
    # The UPDATE comes first in the transaction: it takes PostgreSQL's row lock and SQLite's
    # write lock at once, so a second sealer waits here rather than reading a stale head.
    statement = (
        update(AuditChainState)
        .where(AuditChainState.id == STATE_ID)
        .values(head_seq=AuditChainState.head_seq)
    )
    if cast(CursorResult[Any], db.session.execute(statement)).rowcount == 0:
        db.session.rollback()
        try:
            db.session.add(AuditChainState(id=STATE_ID, head_seq=0))
            db.session.commit()
        except IntegrityError:  # another process created it first
            db.session.rollback()
        db.session.execute(statement)
    return db.session.execute(
        select(AuditChainState).where(AuditChainState.id == STATE_ID)
        .execution_options(populate_existing=True)
    ).scalar_one()


def _unsealed() -> int:
    unsealed = select(func.count()).select_from(_events).where(_events.c.chain_seq.is_(None))
    return db.session.scalar(unsealed) or 0


def _store(result: Verification) -> None:
    # The outcome, for the audit page; a short UPDATE of the state row, no chain lock needed.
    state = db.session.get(AuditChainState, STATE_ID, populate_existing=True)
    if state is None:
        state = AuditChainState(id=STATE_ID, head_seq=0)
        db.session.add(state)
    state.verified_at, state.verified_ok = utcnow(), result.ok
    state.verified_seq, state.verified_id = result.through_seq, result.through_id
    state.broken_id, state.problem = result.broken_id, result.problem
    db.session.commit()
