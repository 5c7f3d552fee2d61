"""``rotate-key`` and ``verify`` over the pending device grants' codes (``device_grants``).

A pending grant's device code, user code and complete verification URL are one value
encrypted under the current key (AAD ``device-grant:<id>``); ended grants hold none. Their
rows are few and live minutes, so one pass, each row locked (``SKIP LOCKED``: a row being
polled right now is left for the next run), is enough.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import func, select, update

from vault.crypto import DecryptionError
from vault.extensions import db
from vault.models import DeviceGrant, device_grant_aad
from vault.tokens.store import token_vault


@dataclass
class DeviceGrantRotation:
    """What one pass did: how many re-encrypted, which grant ids could not be decrypted."""

    reencrypted: int = 0
    undecryptable: list[int] = field(default_factory=list)


def count_outdated_device_grants() -> int:
    """How many pending grants' codes are not under the current key."""
    current = token_vault.cipher.current_key_id
    return db.session.scalar(
        select(func.count(DeviceGrant.id)).where(
            DeviceGrant.ciphertext.is_not(None), DeviceGrant.key_id != current
        )
    ) or 0


def rotate_device_grants() -> DeviceGrantRotation:
    """Re-encrypt every pending grant's codes not under the current key (one transaction)."""
    cipher = token_vault.cipher
    current = cipher.current_key_id
    result = DeviceGrantRotation()
    rows = db.session.execute(
        select(DeviceGrant.id, DeviceGrant.ciphertext)
        .where(DeviceGrant.ciphertext.is_not(None), DeviceGrant.key_id != current)
        .order_by(DeviceGrant.id)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        try:
            plaintext = cipher.decrypt(row.ciphertext, aad=device_grant_aad(row.id))
        except DecryptionError:
            result.undecryptable.append(row.id)
            continue
        db.session.execute(
            update(DeviceGrant)
            .where(DeviceGrant.id == row.id, DeviceGrant.ciphertext == row.ciphertext)
            .values(ciphertext=cipher.encrypt(plaintext, aad=device_grant_aad(row.id)),
                    key_id=current)
            .execution_options(synchronize_session=False)
        )
        result.reencrypted += 1
    db.session.commit()
    return result


def verify_device_grants() -> Iterator[int | None]:
    """Try to decrypt every pending grant's codes; yields a failing grant's id, None per success."""
    rows = db.session.execute(
        select(DeviceGrant.id, DeviceGrant.ciphertext)
        .where(DeviceGrant.ciphertext.is_not(None))
        .order_by(DeviceGrant.id)
    ).all()
    db.session.rollback()
    for row in rows:
        try:
            token_vault.cipher.decrypt(row.ciphertext, aad=device_grant_aad(row.id))
            yield None
        except DecryptionError:
            yield row.id


def count_device_grant_values() -> int:
    """How many encrypted device-grant values are stored."""
    return db.session.scalar(
        select(func.count(DeviceGrant.id)).where(DeviceGrant.ciphertext.is_not(None))
    ) or 0
