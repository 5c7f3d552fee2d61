"""Key rotation, verification and the start-up secret check.

See docs/architecture.md, "Ciphertext format".

Rotation re-encrypts in batches, one transaction each, locking the rows it rewrites
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so a refresh writing the same row at the same time
either waits for the batch or is skipped by it: nothing written by a refresh is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from flask import Flask
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from vault.config import ConfigError
from vault.crypto import DecryptionError
from vault.extensions import db
from vault.models import Token, token_aad
from vault.tokens.store import token_vault

DEFAULT_BATCH_SIZE = 500
# How many values the start-up check tries before it believes the secret is wrong.
STARTUP_SAMPLE = 5


@dataclass
class RotationResult:
    """What one ``rotate-key`` run did."""

    reencrypted: int = 0
    # (token id, connection id, kind) of each value that could not be decrypted
    undecryptable: list[tuple[int, int, str]] = field(default_factory=list)


def count_outdated() -> int:
    """How many stored values are not under the current key."""
    current = token_vault.cipher.current_key_id
    return db.session.scalar(select(func.count(Token.id)).where(Token.key_id != current)) or 0


def rotate(
    batch_size: int = DEFAULT_BATCH_SIZE, progress: Callable[[int], None] | None = None
) -> RotationResult:
    """Re-encrypt every value not under the current key; resumable and idempotent."""
    cipher = token_vault.cipher
    current = cipher.current_key_id
    result = RotationResult()
    skipped: set[int] = set()  # undecryptable rows, so the loop does not pick them again
    tokens = cast(Table, Token.__table__)
    update_statement = (
        update(tokens)
        .where(tokens.c.id == bindparam("token_id"))
        .values(ciphertext=bindparam("new_ciphertext"), key_id=bindparam("new_key_id"))
    )
    # Walk the ids upwards (no rescans of what is done); rows locked by a refresh are
    # skipped and picked up by one more pass, which ends when it finds nothing to do.
    last_id = 0
    while True:
        query = (
            select(Token.id, Token.connection_id, Token.kind, Token.ciphertext)
            .where(Token.key_id != current, Token.id > last_id)
            .order_by(Token.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        if skipped:
            query = query.where(Token.id.not_in(skipped))
        rows = db.session.execute(query).all()
        if not rows:
            db.session.commit()
            if last_id == 0:
                return result
            last_id = 0
            continue
        last_id = rows[-1].id
        changes = []
        for row in rows:
            aad = token_aad(row.connection_id, row.kind)
            try:
                plaintext = cipher.decrypt(row.ciphertext, aad=aad)
            except DecryptionError:
                skipped.add(row.id)
                result.undecryptable.append((row.id, row.connection_id, row.kind))
                continue
            changes.append({
                "token_id": row.id,
                "new_ciphertext": cipher.encrypt(plaintext, aad=aad),
                "new_key_id": current,
            })
        if changes:
            db.session.execute(
                update_statement, changes, execution_options={"synchronize_session": False}
            )
        db.session.commit()
        result.reencrypted += len(changes)
        if progress is not None:
            progress(len(rows))


@dataclass(frozen=True)
class Undecryptable:
    token_id: int
    connection_id: int
    kind: str
    key_id: str


def verify(batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[Undecryptable | None]:
    """Try to decrypt every value (AAD included); yields each failure, and None per success.

    Reads only, in id order and in batches, so it is safe on a live database.
    """
    cipher = token_vault.cipher
    last_id = 0
    while True:
        rows = db.session.execute(
            select(Token.id, Token.connection_id, Token.kind, Token.key_id, Token.ciphertext)
            .where(Token.id > last_id)
            .order_by(Token.id)
            .limit(batch_size)
        ).all()
        if not rows:
            return
        for row in rows:
            try:
                cipher.decrypt(row.ciphertext, aad=token_aad(row.connection_id, row.kind))
                yield None
            except DecryptionError:
                yield Undecryptable(row.id, row.connection_id, row.kind, row.key_id)
        last_id = rows[-1].id
        db.session.rollback()  # end the read transaction between batches


def check_secret_matches_database(app: Flask) -> None:
    """Refuse to start when the database holds values and none decrypts under our secrets.

    Starting with a wrong ``ENCRYPTION_SECRET`` would mark every token broken, or overwrite
    good ones; stopping with a clear message is the only safe answer. A database that is
    empty, not migrated yet, or unreachable is not this check's business.
    """
    with app.app_context():
        cipher = token_vault.cipher
        try:
            with db.engine.connect() as connection:
                known = connection.execute(
                    select(Token.id, Token.connection_id, Token.kind, Token.ciphertext)
                    .where(Token.key_id.in_(cipher.key_ids))
                    .order_by(Token.id.desc())
                    .limit(STARTUP_SAMPLE)
                ).all()
                if not known:
                    any_value = connection.execute(select(Token.id).limit(1)).first()
        except SQLAlchemyError:
            return
    if not known:
        if any_value is None:
            return
        raise ConfigError(
            "no stored value is encrypted under ENCRYPTION_SECRET or ENCRYPTION_SECRET_PREVIOUS; "
            "the secret is wrong (restore the right one; list retired ones in "
            "ENCRYPTION_SECRET_PREVIOUS)"
        )
    for row in known:
        try:
            cipher.decrypt(row.ciphertext, aad=token_aad(row.connection_id, row.kind))
            return
        except DecryptionError:
            continue
    raise ConfigError(
        "stored values carry this secret's key id but none decrypts; the database may have been "
        "tampered with; run `flask --app app vault verify` with the right secret to see which"
    )
