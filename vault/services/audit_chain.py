"""The audit trail's tamper-evident chain: sealing, verification and retention.

Rows are written as ever (``vault.audit``), unsealed. The sealer then links them, in id order,
each under the next ``chain_seq``::

    hash(n)   = SHA-256(hash(n - 1) || canonical(row n))        hash(0) = 32 zero bytes
    chain_mac = HMAC-SHA256(key, hash(n))

with ``key`` derived from ENCRYPTION_SECRET under its own label (``vault.crypto``) and its
key id kept on the row. Every MAC covers the whole chain up to its row, so nobody without the
secret can edit, insert, delete or reorder a sealed row unnoticed; and since the chain itself is
keyless, ``reseal`` can redo the MACs under a new key one batch at a time, resumably, after a
rotation (until then, old links verify while the retired secret stays in
ENCRYPTION_SECRET_PREVIOUS). The chain's order is ``chain_seq``, handed out at
sealing time, not the id: on PostgreSQL a transaction may commit a lower id after a higher
one was sealed, and such a late row is simply sealed by the next run, at the end of the chain.
So no row is ever skipped and no time margin is needed.

Sealers and the retention job first lock the one ``audit_chain_state`` row (an UPDATE, which
takes a row lock on PostgreSQL and the write lock on SQLite), so the chain never forks; the
unique ``chain_seq`` refuses a fork even if that were bypassed. Retention
(``vault.services.audit_retention``) deletes the oldest links and leaves an authenticated
checkpoint where verification resumes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

from flask import current_app
from sqlalchemy import CursorResult, Row, Table, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vault.crypto import AUDIT_CHAIN_LABEL
from vault.extensions import db
from vault.models import AuditChainCheckpoint, AuditChainState, AuditEvent, utcnow
from vault.services.audit_handouts import fold_handouts
from vault.tokens.store import token_vault

BATCH_SIZE = 1000
GENESIS_HASH = bytes(32)
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
    head_hash: bytes | None


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


def link_hash(previous: bytes, row: Mapping[Any, Any]) -> bytes:
    """The chain hash at ``row`` (with its ``chain_seq``): everything up to it, in order."""
    return hashlib.sha256(previous + canonical(row)).digest()


def link_mac(key: bytes, chain_hash: bytes) -> bytes:
    """The seal on a link: only a holder of the secret can make it."""
    return hmac.digest(key, chain_hash, "sha256")


def seal(batch_size: int = BATCH_SIZE) -> SealResult:
    """Seal every unsealed audit row, in id order, in transactions of ``batch_size`` rows."""
    sealed = 0
    while True:
        count, state = _seal_batch(batch_size)
        sealed += count
        if count < batch_size:
            return SealResult(sealed, state.head_seq, state.head_id, state.head_hash)


def _seal_batch(limit: int) -> tuple[int, AuditChainState]:
    try:
        state = lock_state()
        rows = db.session.execute(
            select(_events).where(_events.c.chain_seq.is_(None)).order_by(_events.c.id).limit(limit)
        ).all()
        key_id, key = current_key()
        previous, seq, links = state.head_hash or GENESIS_HASH, state.head_seq, []
        for row in rows:
            seq += 1
            previous = link_hash(previous, {**row._mapping, "chain_seq": seq})
            links.append(
                {"row_id": row.id, "seq": seq, "mac": link_mac(key, previous), "kid": key_id}
            )
        if links:
            db.session.execute(
                update(_events)
                .where(_events.c.id == bindparam("row_id"))
                .values(chain_seq=bindparam("seq"), chain_mac=bindparam("mac"),
                        chain_key_id=bindparam("kid")),
                links,
            )
            state.head_seq, state.head_hash = seq, previous
            state.head_id, state.sealed_at = links[-1]["row_id"], utcnow()
        db.session.commit()
        return len(links), state
    except BaseException:
        db.session.rollback()
        raise


def verify(
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    anchor: tuple[int, bytes] | None = None,
) -> Verification:
    """Walk the whole chain in batches; stop at the first broken link. Stores the outcome.

    ``anchor``: a ``(link, hash)`` printed by an earlier ``audit-seal`` and kept elsewhere;
    the chain must reach that link with that hash, which catches a truncated newest tail
    (and, for the links up to it, even a rewrite by someone holding the secret).
    """
    keys = chain_keys()
    state = db.session.get(AuditChainState, STATE_ID, populate_existing=True)
    head_seq = state.head_seq if state is not None else 0
    verified, last_seq, last_id = 0, 0, None
    try:
        previous, expected = resume_point(keys)
        last_seq = expected - 1
        while True:
            rows = links_from(expected, batch_size)
            if not rows or rows[0].chain_seq != expected:
                # Retention may have deleted past this point meanwhile: go on after it.
                moved = resume_point(keys)
                if moved[1] > expected:
                    (previous, expected), last_seq = moved, moved[1] - 1
                    continue
            for row in rows:
                previous = check_link(keys, previous, expected, row._mapping)
                if anchor is not None and row.chain_seq == anchor[0] and previous != anchor[1]:
                    raise ChainBroken(row.id, f"row #{row.id} (link {anchor[0]}) does not "
                                              "match the anchored hash: the chain was rewritten")
                expected, verified = expected + 1, verified + 1
                last_seq, last_id = row.chain_seq, row.id
            if progress is not None:
                progress(len(rows))
            if len(rows) < batch_size:
                break
        head_seq = max(head_seq, anchor[0] if anchor else 0)
        if last_seq < head_seq:
            raise ChainBroken(None, f"the chain ends at link {last_seq} but was sealed up to link "
                                    f"{head_seq}: the newest sealed rows were deleted")
        result = Verification(True, verified, last_seq, last_id, None, None, _unsealed())
    except ChainBroken as broken:
        result = Verification(False, verified, last_seq, last_id, broken.row_id, broken.problem,
                              _unsealed())
    _store(result)
    return result


def resume_point(keys: Mapping[str, bytes]) -> tuple[bytes, int]:
    # Where the chain starts: its genesis, or the newest checkpoint left by retention.
    checkpoint = _newest_checkpoint()
    if checkpoint is None:
        return GENESIS_HASH, 1
    key = keys.get(checkpoint.key_id)
    if key is None or not hmac.compare_digest(checkpoint.mac, checkpoint_mac(key, checkpoint)):
        raise ChainBroken(None, f"retention checkpoint #{checkpoint.id} is not authentic "
                                "(forged or edited, or its key is no longer in the key ring)")
    stray = db.session.scalar(
        select(_events.c.id).where(_events.c.chain_seq <= checkpoint.through_seq).limit(1)
    )
    if stray is not None:
        raise ChainBroken(stray, f"row #{stray} sits before the retention checkpoint at link "
                                 f"{checkpoint.through_seq}: it was inserted")
    return bytes(checkpoint.through_hash), checkpoint.through_seq + 1


def check_link(
    keys: Mapping[str, bytes], previous: bytes, expected: int, row: Mapping[Any, Any]
) -> bytes:
    # One link checked, by verification, retention and resealing alike; returns its hash.
    row_id = row["id"]
    if row["chain_seq"] != expected:
        raise ChainBroken(row_id, f"row #{row_id} is link {row['chain_seq']} where link "
                                  f"{expected} was expected: sealed rows before it were deleted")
    key = keys.get(row["chain_key_id"] or "")
    if key is None:
        raise ChainBroken(row_id, f"row #{row_id} was sealed with key {row['chain_key_id']}, "
                                  "which is not in the key ring (ENCRYPTION_SECRET_PREVIOUS)")
    chain_hash = link_hash(previous, row)
    if not hmac.compare_digest(bytes(row["chain_mac"] or b""), link_mac(key, chain_hash)):
        raise ChainBroken(row_id, f"row #{row_id} does not match its seal: it was edited, or "
                                  "inserted, or rows before it were reordered")
    return chain_hash


def checkpoint_mac(key: bytes, checkpoint: AuditChainCheckpoint) -> bytes:
    fields = {
        "checkpoint": checkpoint.through_seq,
        "row": checkpoint.through_id,
        "hash": bytes(checkpoint.through_hash).hex(),
    }
    return hmac.digest(key, json.dumps(fields, sort_keys=True).encode(), "sha256")


def reseal(batch_size: int = BATCH_SIZE) -> int:
    """Redo the MACs of links (and checkpoints) not under the current key; returns how many.

    For after ``vault rotate-key``: each link is verified under its own key first (a broken
    one raises :class:`ChainBroken` and nothing from it on is touched), then sealed under the
    current key. A batch a transaction; interrupt and rerun at will.
    """
    keys = chain_keys()
    key_id, key = current_key()
    resealed, position = 0, None
    while True:
        try:
            lock_state()
            start = resume_point(keys)
            if position is None or position[1] <= start[1]:  # retention may have run meanwhile
                position = start
                resealed += _reseal_checkpoint(key_id, key)
            previous, expected = position
            rows = links_from(expected, batch_size)
            links = []
            for row in rows:
                previous = check_link(keys, previous, expected, row._mapping)
                expected += 1
                if row.chain_key_id != key_id:
                    links.append({"row_id": row.id, "mac": link_mac(key, previous), "kid": key_id})
            if links:
                db.session.execute(
                    update(_events).where(_events.c.id == bindparam("row_id"))
                    .values(chain_mac=bindparam("mac"), chain_key_id=bindparam("kid")),
                    links,
                )
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        resealed, position = resealed + len(links), (previous, expected)
        if len(rows) < batch_size:
            return resealed


def _reseal_checkpoint(key_id: str, key: bytes) -> int:
    checkpoint = _newest_checkpoint()
    if checkpoint is None or checkpoint.key_id == key_id:
        return 0
    checkpoint.key_id, checkpoint.mac = key_id, checkpoint_mac(key, checkpoint)
    return 1


def _newest_checkpoint() -> AuditChainCheckpoint | None:
    # populate_existing: retention moves a checkpoint on in place, perhaps since it was loaded.
    return db.session.scalars(
        select(AuditChainCheckpoint)
        .order_by(AuditChainCheckpoint.through_seq.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    ).first()


def chain_state() -> AuditChainState | None:
    """The chain's head and last verification, or None before anything was sealed."""
    return db.session.get(AuditChainState, STATE_ID)


def chain_length() -> int:
    """How many sealed links there are to verify (from the head and the newest checkpoint)."""
    state, checkpoint = chain_state(), _newest_checkpoint()
    start = checkpoint.through_seq if checkpoint is not None else 0
    return max((state.head_seq if state is not None else 0) - start, 0)


def seal_audit_chain(now: datetime) -> bool:
    """Worker job (every minute): seal the rows written since the last run.

    First the hours of hand-out counts that are over become rows (VAULT_AUDIT_HANDOUTS=hourly).
    """
    try:
        fold_handouts(now)
        seal()
    except SQLAlchemyError:
        current_app.logger.exception("sealing the audit chain failed")
        return False
    return True


def links_from(seq: int, limit: int) -> Sequence[Row[Any]]:
    """The next ``limit`` sealed rows from link ``seq`` on, in chain order, as plain rows."""
    return db.session.execute(
        select(_events).where(_events.c.chain_seq >= seq).order_by(_events.c.chain_seq).limit(limit)
    ).all()


def chain_keys() -> dict[str, bytes]:
    """Every chain key of the key ring by key id (the current one and retired ones)."""
    return dict(token_vault.cipher.purpose_keys(AUDIT_CHAIN_LABEL))


def current_key() -> tuple[str, bytes]:
    return token_vault.cipher.purpose_keys(AUDIT_CHAIN_LABEL)[0]


def lock_state() -> AuditChainState:
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
