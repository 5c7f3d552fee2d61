"""The dashboard's shared health expression: what a connection needs, computed in SQL.

Every page runs a fixed number of statements whatever the number of connections, and
nothing here decrypts: the list and health pages read status and expiry columns only
(docs/architecture.md, "Data model"). The counts by health are in
:mod:`vault.queries.counts`, the connections list in :mod:`vault.queries.connection_list`,
the health page's own queries in :mod:`vault.queries.health`, the audit page's in
:mod:`vault.queries.audit`.

A connection's *health* is what staff act on, computed in SQL by one expression
(:attr:`_Source.health`) that the overview counts, the list filter and the health page all
share, so a count on one page always matches the list it links to. The expressions are
built once per process, the time coming in as bound parameters (:func:`at`).
"""

from __future__ import annotations

import enum
import functools
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, case, or_, select

from vault.extensions import db
from vault.grants import GrantProviders, StoredRows, renewable_clause
from vault.models import (
    Connection,
    ConnectionStatus,
    ConnectionTag,
    UTCDateTime,
    utcnow,
)

PAGE_SIZE = 50
SOON = timedelta(hours=24)


class Health(str, enum.Enum):
    """What a connection needs, from its status, failures and token expiries."""

    ACTIVE = "active"  # usable, valid beyond 24 h (or expiry unknown)
    EXPIRING = "expiring"  # usable, expires within 24 h
    REFRESHABLE = "refreshable"  # expired, but a refresh token or API secret can renew it
    NEEDS_RECONNECT = "needs_reconnect"  # grant refused, or expired with nothing to renew it
    ERROR = "error"  # refreshes are failing (provider down, rate-limited, ...)
    DISCONNECTED = "disconnected"

    @property
    def label(self) -> str:
        """The words for it, as badges and filters show them."""
        return HEALTH_LABELS[self]


HEALTH_LABELS = {
    Health.ACTIVE: "Active",
    Health.EXPIRING: "Expiring within 24 h",
    Health.REFRESHABLE: "Expired, refreshable",
    Health.NEEDS_RECONNECT: "Needs reconnect",
    Health.ERROR: "Error",
    Health.DISCONNECTED: "Disconnected",
}
EXPIRED_UNRENEWABLE = "expired, and nothing stored can renew it"


NOW = bindparam("now", type_=UTCDateTime())
_SOON = bindparam("soon", type_=UTCDateTime())


def at(now: datetime | None) -> dict:
    """The bound parameters of :class:`_Source`'s expressions for the time ``now``.

    The providers file's grants come in as parameters too, so that the expressions, built
    once per process, serve every app and providers file.
    """
    now = now or utcnow()
    grants = GrantProviders.of(current_app.extensions["providers"])
    return {"now": now, "soon": now + SOON, **grants.params()}


@functools.cache
def health_source() -> _Source:
    """The connections and their health expression (built once, on first use)."""
    return _Source()


class _Source:
    """``connections`` and the health expression over its own columns.

    No join to ``tokens``: what the health reads of a connection's token rows (the expiry
    the pages show, the access token's or else the API key's; whether stored rows can renew
    it) is copied onto the connection by the triggers on ``tokens``
    (:data:`vault.count_triggers.TOKEN_COPIES`), in the transaction that changes the rows.
    So every list, count and health statement reads one table through its indexes, and its
    cost does not grow with a lookup per connection. The time comes in as the bound
    parameters ``now`` and ``soon`` (:func:`at`), so the expressions are built once per
    process.
    """

    def __init__(self, stored: StoredRows | None = None):
        # ``stored``: how the renewal check sees the token rows; the copies on the
        # connection, unless a test asks for the rows themselves to hold the copies to.
        table = Connection.__table__
        self.from_ = table
        self.expires_at = Connection.expires_at
        self.renewable = renewable_clause(table, stored or StoredRows.copied(table), now=NOW)
        self.health = self._health()

    def _health(self):
        status = Connection.status
        return case(
            (status == ConnectionStatus.DISCONNECTED.value, Health.DISCONNECTED.value),
            (status == ConnectionStatus.NEEDS_RECONNECT.value, Health.NEEDS_RECONNECT.value),
            (
                or_(status == ConnectionStatus.ERROR.value, Connection.failure_count > 0),
                Health.ERROR.value,
            ),
            (
                self.expires_at <= NOW,
                case(
                    (self.renewable, Health.REFRESHABLE.value), else_=Health.NEEDS_RECONNECT.value
                ),
            ),
            (self.expires_at <= _SOON, Health.EXPIRING.value),
            else_=Health.ACTIVE.value,
        )

    def rows(self):
        """A SELECT of what a list row shows."""
        return select(
            Connection.id,
            Connection.provider,
            Connection.account_subject,
            Connection.account_email,
            Connection.account_name,
            Connection.status,
            Connection.failure_count,
            Connection.last_error,
            Connection.last_refreshed_at,
            Connection.next_refresh_at,
            Connection.updated_at,
            Connection.reconnect_by,
            Connection.reconnect_reason,
            Connection.owner_email,
            self.expires_at.label("expires_at"),
            Connection.refresh_token_expires_at.label("refresh_expires_at"),
            self.renewable.label("renewable"),
            self.health.label("health"),
        ).select_from(self.from_)


def positive_int(value: Any, default: int | None = None) -> int | None:
    """A query-string number, or ``default`` when it is missing, malformed or out of range."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if 0 < number < 2**31 else default


def tags_by_connection(connection_ids: list[int]) -> dict[int, list[str]]:
    """The tags of the given connections (one query, for a page of them), each sorted."""
    tags: dict[int, list[str]] = {}
    if not connection_ids:
        return tags
    for connection_id, tag in db.session.execute(
        select(ConnectionTag.connection_id, ConnectionTag.tag)
        .where(ConnectionTag.connection_id.in_(connection_ids))
        .order_by(ConnectionTag.connection_id, ConnectionTag.tag)
    ):
        tags.setdefault(connection_id, []).append(tag)
    return tags
