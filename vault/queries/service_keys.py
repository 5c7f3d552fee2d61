"""Read side of the service-key pages: each key with its state, and the connections it used.

Never reads a secret: keys are shown by name and public prefix, consumers come from
``connection_consumers`` (kept by the token API), never from the audit table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from vault.extensions import db
from vault.models import Connection, ConnectionConsumer, ServiceKey

# A key whose expiry is this close is shown as "expires soon".
EXPIRES_SOON = timedelta(days=7)


class KeyState(str, enum.Enum):
    """What a key's secrets do now, as the list shows it."""

    LIVE = "live"
    EXPIRES_SOON = "expires_soon"
    IN_OVERLAP = "in_overlap"
    EXPIRED = "expired"
    REVOKED = "revoked"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class KeyRow:
    """A key and its state at the moment the page was drawn."""

    key: ServiceKey
    state: KeyState


@dataclass(frozen=True)
class Consumption:
    """A connection a key fetched tokens of, and when first and last."""

    connection_id: int
    provider: str
    account: str
    status: str
    first_fetched_at: datetime
    last_fetched_at: datetime


def key_state(key: ServiceKey, now: datetime) -> KeyState:
    """The state shown for ``key`` at ``now``: the words for what
    ``services.service_keys.live_key_matches`` lets through."""
    if key.revoked_at is not None:
        return KeyState.REVOKED
    if key.expires_at is not None and key.expires_at <= now:
        return KeyState.EXPIRED
    if key.previous_key_expires_at is not None and key.previous_key_expires_at > now:
        return KeyState.IN_OVERLAP
    if key.expires_at is not None and key.expires_at - now <= EXPIRES_SOON:
        return KeyState.EXPIRES_SOON
    return KeyState.LIVE


def list_keys(now: datetime) -> list[KeyRow]:
    """Every service key by name, revoked ones included, with its state."""
    keys = db.session.scalars(select(ServiceKey).order_by(ServiceKey.name))
    return [KeyRow(key, key_state(key, now)) for key in keys]


def consumers_of(key_id: int) -> list[Consumption]:
    """The connections key ``key_id`` fetched tokens of, most recent fetch first."""
    rows = db.session.execute(
        select(
            Connection.id, Connection.provider, Connection.account_email,
            Connection.account_name, Connection.account_subject, Connection.status,
            ConnectionConsumer.first_fetched_at, ConnectionConsumer.last_fetched_at,
        )
        .join(ConnectionConsumer, ConnectionConsumer.connection_id == Connection.id)
        .where(ConnectionConsumer.service_key_id == key_id)
        .order_by(ConnectionConsumer.last_fetched_at.desc(), Connection.id)
    )
    return [
        Consumption(
            row.id, row.provider, row.account_email or row.account_name or row.account_subject,
            row.status, row.first_fetched_at, row.last_fetched_at,
        )
        for row in rows
    ]
