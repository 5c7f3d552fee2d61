"""The token API's one-statement hand-out of a fresh access token (PostgreSQL).

See docs/architecture.md, "Token API". One round trip does what the long way does in three
or more: it checks the presented service key (``live_key_matches``), reads the connection and
its access-token row within the key's restrictions (``AuthenticatedKey.may_read()``) and, only
when the token can be handed out as it is (``ready_to_hand_out``), writes the hand-out's audit
row (or hourly count), upserts the key's consumer row and moves the key's last use (both at
most once a minute). Data-modifying CTEs, composed from the same SQLAlchemy pieces the long way
uses, so nothing is decided twice. In autocommit, the statement is its own transaction.

Anything else answers None and the request takes the long way, unchanged: an unknown,
revoked, expired or changed key, a connection that is missing, not readable by the key, not
active or whose token needs a refresh, a provider no longer configured, SQLite.
"""

from __future__ import annotations

from functools import lru_cache

from flask import current_app
from sqlalchemy import Select, and_, bindparam, exists, select

from vault import audit
from vault.extensions import db
from vault.models import Connection, ServiceKey, Token, TokenKind, utcnow
from vault.services import service_keys
from vault.tokens.store import AccessToken, ready_to_hand_out, token_vault

_connections, _tokens = Connection.__table__, Token.__table__


def hand_out_at_once(
    presented: str | None, connection_id: int
) -> tuple[service_keys.AuthenticatedKey, AccessToken] | None:
    """The key and the token handed out (and audited, committed) in one statement, or None:
    take the long way.

    Needs the session's connection in autocommit (the token API's ``before_request``): the
    statement is then its own transaction, with no BEGIN or COMMIT round trip around it.
    """
    connection = db.session.connection()
    if connection.dialect.name != "postgresql":
        return None
    known = service_keys.known_key(presented)
    if known is None:
        return None
    key_hash, key = known
    providers = tuple(sorted(provider.key for provider in current_app.extensions["providers"]))
    hourly = current_app.config["VAULT_AUDIT_HANDOUTS"] == "hourly"
    now = utcnow()
    parameters = {
        "presented_key_hash": key_hash,
        "now": now,
        "stale_before": now - service_keys.LAST_USED_RESOLUTION,
        "handout_connection_id": connection_id,
        "ready_after": token_vault.ready_after(),
        "consumer_key_id": key.id,
        **audit.handed_out_parameters(actor=key.actor, now=now),
    }
    row = connection.execute(_statement(key, providers, hourly), parameters).one_or_none()
    if row is None:
        return None
    return key, token_vault.access_token(connection_id, row.ciphertext, row.expires_at)


@lru_cache(maxsize=256)
def _statement(
    key: service_keys.AuthenticatedKey, providers: tuple[str, ...], hourly: bool
) -> Select:
    """The hand-out statement for one key, configured providers and audit mode, built once
    (SQLAlchemy caches its SQL; psycopg prepares it on the server after a few runs)."""
    live_key = select(ServiceKey.id).where(service_keys.still_as_known(key)).cte("live_key")
    ready = (
        select(_connections.c.id, _connections.c.provider, _tokens.c.ciphertext,
               _tokens.c.expires_at)
        .select_from(
            _connections.join(
                _tokens,
                and_(_tokens.c.connection_id == _connections.c.id,
                     _tokens.c.kind == TokenKind.ACCESS.value),
            )
        )
        .where(
            _connections.c.id == bindparam("handout_connection_id"),
            exists(select(live_key.c.id)),
            key.may_read(),
            # A provider removed from the providers file: the long way answers 409.
            _connections.c.provider.in_(providers),
            ready_to_hand_out(),
        )
        .cte("ready")
    )
    touched = service_keys.touch_if_due(live_key).cte("touched")
    audited = audit.handed_out_from(ready, hourly=hourly).cte("audited")
    first_fetch, fetch_moved = service_keys.consumer_seen_from(ready)
    return (
        select(ready.c.ciphertext, ready.c.expires_at)
        .add_cte(touched, audited, first_fetch.cte("consumer_added"),
                 fetch_moved.cte("consumer_moved"))
    )
