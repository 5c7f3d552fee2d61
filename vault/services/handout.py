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

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from flask import Flask, current_app
from sqlalchemy import Connection, Select, and_, bindparam, create_engine, exists, select

from vault import audit
from vault.extensions import db
from vault.models import Connection as ConnectionRow
from vault.models import ServiceKey, Token, TokenKind, utcnow
from vault.services import service_keys
from vault.tokens.store import AccessToken, ready_to_hand_out, token_vault

_connections, _tokens = ConnectionRow.__table__, Token.__table__
# app.extensions' key for the hand-out engine (init_app).
ENGINE = "vault.handout"


def hand_out_at_once(
    presented: str | None, connection_id: int
) -> tuple[service_keys.AuthenticatedKey, AccessToken] | None:
    """The key and the token handed out (and audited, committed) in one statement, or None:
    take the long way.

    In autocommit, so the statement is its own transaction, with no BEGIN or COMMIT round
    trip around it: on the hand-out engine when there is one (``VAULT_HANDOUT_COMMIT`` =
    ``async``, whose commit does not wait for the disk: :func:`init_app`), else on the
    request's session.
    """
    if db.engine.dialect.name != "postgresql":
        return None
    known = service_keys.known_key(presented)
    if known is None:
        return None
    with _autocommit_connection() as connection:
        return _hand_out(connection, known, connection_id)


def init_app(app: Flask) -> None:
    """Give the app its hand-out engine when hand-outs commit asynchronously (PostgreSQL).

    The same database through a pool of its own whose connections have
    ``synchronous_commit`` off: a hand-out's commit (its audit row) returns without waiting
    for the disk flush, which on a busy server costs more than the rest of the statement. A
    crash of the database server (not of the vault) can lose the hand-out rows of its last
    moments (three times ``wal_writer_delay``, 0.6 s by default); nothing else ever runs on
    this engine, so every other write, a rotated refresh token above all, stays durable.
    Creating the engine opens no connection.
    """
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if app.config["VAULT_HANDOUT_COMMIT"] == "async" and url.startswith("postgresql"):
        engine = create_engine(
            url, pool_pre_ping=True, connect_args={"options": "-c synchronous_commit=off"})
        app.extensions[ENGINE] = engine
        # The engine lives as long as the app: its pooled connections are closed when the
        # app goes away, even by code that never calls dispose().
        weakref.finalize(app, engine.dispose)


def dispose(app: Flask) -> None:
    """Close the hand-out engine's pooled connections (tests, and code that drops an app)."""
    engine = app.extensions.get(ENGINE)
    if engine is not None:
        engine.dispose()


@contextmanager
def _autocommit_connection() -> Iterator[Connection]:
    engine = current_app.extensions.get(ENGINE)
    if engine is None:
        yield db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        yield connection


def _hand_out(
    connection: Connection, known: tuple[str, service_keys.AuthenticatedKey], connection_id: int
) -> tuple[service_keys.AuthenticatedKey, AccessToken] | None:
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
