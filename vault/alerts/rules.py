"""The time-based alert rules, evaluated by the worker each cycle.

``connection.refresh_failing``: transient refresh failures for longer than
``VAULT_ALERT_FAILING_MINUTES``. ``connection.expiring``: the connection's reconnect-by date
(vault/grants/limits.py: the moment it stops working unless a person acts) falls within
``VAULT_ALERT_EXPIRING_DAYS``. ``provider.client_secret_expiring``: the app's own client
secret at a provider (``client_secret_expires_at`` in the providers file) ends within 30 days.
Each fires once per failing run, per deadline or per secret expiry (the dedupe key names it),
however many workers evaluate it how often.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from vault.alerts.events import (
    CLIENT_SECRET_EXPIRING,
    EXPIRING,
    REFRESH_FAILING,
    add_once,
    connection_details,
    failing_key,
    stamp,
)
from vault.extensions import db
from vault.models import Connection, ConnectionStatus
from vault.queries.health import connections_to_reconnect_within
from vault.queries.providers import SECRET_WARNING, providers_with_client_secrets_expiring


@dataclass(frozen=True)
class Expiring:
    """A connection that stops working at ``ends_at`` unless a person acts, and why."""

    connection: Connection
    reason: str  # the reconnect-by reason, in words
    ends_at: datetime


def expiring_connections(now: datetime, within: timedelta) -> list[Expiring]:
    """Active connections that will stop working within ``within`` unless a person acts.

    The one place that decides "expiring" for alerts: the stored reconnect-by date, which
    already weighs what the provider said against the provider's rules.
    """
    return [
        Expiring(connection, connection.reconnect_reason or "", connection.reconnect_by)
        for connection in connections_to_reconnect_within(now, within)
        if connection.reconnect_by is not None
    ]


def failing_connections(now: datetime, longer_than: timedelta) -> list[Connection]:
    """Active connections whose refreshes have failed, without a success, for ``longer_than``."""
    return list(
        db.session.scalars(
            select(Connection)
            .where(
                Connection.status == ConnectionStatus.ACTIVE.value,
                Connection.failing_since.is_not(None),
                Connection.failing_since <= now - longer_than,
            )
            .order_by(Connection.id)
        )
    )


def evaluate(now: datetime) -> int:
    """Add the alerts the rules call for now (each once, ever) and commit; returns how many."""
    config = current_app.config
    added = 0
    for connection in failing_connections(
        now, timedelta(minutes=config["VAULT_ALERT_FAILING_MINUTES"])
    ):
        assert connection.failing_since is not None
        minutes = int((now - connection.failing_since).total_seconds() // 60)
        reason = (
            f"Refreshing its token has failed for {minutes} minutes "
            f"({connection.failure_count} attempts); the vault keeps retrying."
        )
        if connection.last_error:
            reason += f" Last error: {connection.last_error}"
        added += add_once(
            db.session, REFRESH_FAILING, failing_key(connection.id, connection.failing_since),
            provider=connection.provider, connection_id=connection.id,
            details=connection_details(connection, reason),
        )
    for item in expiring_connections(now, timedelta(days=config["VAULT_ALERT_EXPIRING_DAYS"])):
        added += add_once(
            db.session, EXPIRING,
            f"{EXPIRING}:{item.connection.id}:{stamp(item.ends_at)}",
            provider=item.connection.provider, connection_id=item.connection.id,
            details=connection_details(
                item.connection, _expiry_reason(item, now), ends_at=item.ends_at.isoformat()
            ),
        )
    for secret in providers_with_client_secrets_expiring(now, within=SECRET_WARNING):
        added += add_once(
            db.session, CLIENT_SECRET_EXPIRING,
            f"{CLIENT_SECRET_EXPIRING}:{secret.key}:{stamp(secret.expires_at)}",
            provider=secret.key, connection_id=None,
            details={"provider": secret.key, "reason": (
                f"{secret.message} ({secret.expires_at:%d %b %Y}): create a new one at the "
                "provider and put it in the providers file."
            )},
        )
    db.session.commit()
    return added


def _expiry_reason(item: Expiring, now: datetime) -> str:
    day = item.ends_at.strftime("%d %b %Y %H:%M UTC")
    when = f"stopped working on {day}" if item.ends_at <= now else f"stops working on {day}"
    because = f" ({item.reason})" if item.reason else ""
    return f"It {when} unless a person acts{because}: reconnect it, or renew its credential."
