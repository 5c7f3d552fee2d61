"""The time-based alert rules, evaluated by the worker each cycle.

``connection.refresh_failing``: transient refresh failures for longer than
``VAULT_ALERT_FAILING_MINUTES``. ``connection.expiring``: a credential that nothing can renew
ends within ``VAULT_ALERT_EXPIRING_DAYS``. Each fires once per failing run or per credential
expiry (the dedupe key names it), however many workers evaluate it how often.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from vault.alerts.events import (
    EXPIRING,
    REFRESH_FAILING,
    add_once,
    connection_details,
    failing_key,
    stamp,
)
from vault.extensions import db
from vault.models import Connection, ConnectionStatus, Token, TokenKind

# The credentials whose own end nothing in the vault can push back: a pasted API key with an
# expiry (a key exchange renews the JWT it buys, not the key), and a refresh token with one.
_UNRENEWABLE_KINDS = (TokenKind.API_KEY.value, TokenKind.REFRESH.value)


@dataclass(frozen=True)
class Expiring:
    """A connection that stops working at ``ends_at`` unless a person acts, and why."""

    connection: Connection
    kind: str  # the credential that ends: api_key or refresh
    ends_at: datetime


def expiring_connections(now: datetime, within: timedelta) -> list[Expiring]:
    """Active connections that will stop working within ``within`` with nothing to renew them.

    The one place that decides "expiring" for alerts (a stored ``reconnect_by`` date can
    replace the token expiries read here).
    """
    rows = db.session.execute(
        select(Connection, Token.kind, Token.expires_at)
        .join(Token, Token.connection_id == Connection.id)
        .where(
            Connection.status == ConnectionStatus.ACTIVE.value,
            Token.kind.in_(_UNRENEWABLE_KINDS),
            Token.is_valid.is_(True),
            Token.expires_at.is_not(None),
            Token.expires_at <= now + within,
        )
        .order_by(Token.expires_at, Connection.id)
    ).all()
    return [Expiring(connection, kind, ends_at) for connection, kind, ends_at in rows if ends_at]


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
            f"{EXPIRING}:{item.connection.id}:{item.kind}:{stamp(item.ends_at)}",
            provider=item.connection.provider, connection_id=item.connection.id,
            details=connection_details(
                item.connection, _expiry_reason(item, now), ends_at=item.ends_at.isoformat()
            ),
        )
    db.session.commit()
    return added


def _expiry_reason(item: Expiring, now: datetime) -> str:
    day = item.ends_at.strftime("%d %b %Y %H:%M UTC")
    verb = "expired" if item.ends_at <= now else "expires"
    if item.kind == TokenKind.API_KEY.value:
        return (
            f"Its API key {verb} on {day} and nothing can renew it automatically: "
            "put a new key on the connection's page before then."
        )
    return (
        f"Its refresh token {verb} on {day} and the provider does not extend it: "
        "the account's owner must reconnect before then."
    )
