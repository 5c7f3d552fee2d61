"""The database side of the refresh protocol: row locks, leases and fresh reads of token rows.

Every read here bypasses the session's identity map (``populate_existing``), because the
whole point is to see what another worker or process committed meanwhile.

PostgreSQL locks the connection's row (``FOR NO KEY UPDATE``) for the refresh's transaction,
provider call included: other rows stay writable. SQLite has one write lock for the whole
file, so holding a transaction open across the provider call would stall every write of
every process (sign-in, hand-outs' audit rows) for up to the provider's timeout. There a
refresh claims a lease instead (a ``refresh_leases`` row with a random claim and an expiry)
in a short transaction of its own, calls the provider with no transaction open, and
:func:`release` checks in the storing transaction that the claim is still its own. The
claim lives in the session's ``info``, as a row lock lives in its transaction, and leaves it
only once the transaction that deleted the lease has committed: a storing transaction that
fails (SQLite's "database is locked") can be retried, or the lease abandoned, with the claim.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, event, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from vault.extensions import db
from vault.models import Connection, RefreshLease, Token, TokenKind
from vault.tokens.store import token_vault

_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL SQLSTATE raised when lock_timeout expires
_REFRESHABLE_KINDS = (
    TokenKind.ACCESS, TokenKind.REFRESH, TokenKind.API_KEY, TokenKind.API_SECRET,
    TokenKind.PRIVATE_KEY,  # a service account's key file signs its assertions
)
# What a refresh uses and replaces; a credential check compares every stored credential.
REFRESH_KINDS = (TokenKind.ACCESS, TokenKind.REFRESH)
CREDENTIAL_KINDS = _REFRESHABLE_KINDS
# How often a refresh waiting for another's SQLite lease looks again.
LEASE_POLL_SECONDS = 0.1
# A lease outlives its holder's provider call (bounded by the lock timeout) this many times
# over before another refresh may take it: only a crashed or frozen holder loses it.
LEASE_LOCK_TIMEOUTS = 2
_LEASES = "refresh_leases"  # key of the session's info: connection id -> our claim
_RELEASING = "refresh_leases_releasing"  # ids whose lease the open transaction deletes


class LockTimeout(Exception):
    """Another transaction held the connection's row lock (or lease) for too long."""


def uses_leases() -> bool:
    """True on SQLite, where a refresh holds a lease rather than a row lock."""
    return db.session.get_bind().dialect.name != "postgresql"


def lock_row(connection_id: int, *, timeout: float) -> Connection | None:
    """Lock the connection for this refresh and return it, freshly read.

    PostgreSQL: a row lock for this transaction. SQLite: a lease, claimed and committed
    before this returns (see the module docstring); end it with :func:`release`. Raises
    :class:`LockTimeout` when another refresh holds it longer than ``timeout`` seconds.
    """
    if uses_leases():
        if not _claim_lease(connection_id, timeout):
            return None
        return db.session.scalar(
            select(Connection)
            .where(Connection.id == connection_id)
            .execution_options(populate_existing=True)
        )
    try:
        milliseconds = int(timeout * 1000)
        db.session.execute(text(f"SET LOCAL lock_timeout = '{milliseconds}ms'"))
        connection = db.session.scalar(
            select(Connection)
            .where(Connection.id == connection_id)
            # FOR NO KEY UPDATE: as exclusive as FOR UPDATE between refreshes, but it lets
            # rows that merely refer to this one (a hand-out's audit event) be written
            # meanwhile, so no API caller waits for the provider.
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    except OperationalError as error:
        if _is_lock_timeout(error):
            raise LockTimeout() from None
        raise
    return connection


def release(connection_id: int) -> bool:
    """End this session's lease on the connection, as part of the current transaction.

    True when the lease was still ours (or on PostgreSQL, where the commit ends the row
    lock); False when it lapsed and another refresh took it over meanwhile. Nothing is
    released until the caller commits, so the result and the release land together.
    """
    claim = db.session.info.get(_LEASES, {}).get(connection_id)
    if claim is None:
        return not uses_leases()
    # Forgotten only when this transaction commits (see _forget_released).
    db.session.info.setdefault(_RELEASING, set()).add(connection_id)
    deleted = db.session.execute(
        delete(RefreshLease).where(
            RefreshLease.connection_id == connection_id, RefreshLease.claim == claim
        )
    )
    return deleted.rowcount == 1  # type: ignore[attr-defined]


@event.listens_for(Session, "after_commit")
def _forget_released(session: Session) -> None:
    """The leases a committed transaction deleted are no longer this session's."""
    leases = session.info.get(_LEASES, {})
    for connection_id in session.info.pop(_RELEASING, ()):
        leases.pop(connection_id, None)


@event.listens_for(Session, "after_rollback")
def _keep_unreleased(session: Session) -> None:
    """A rolled-back release deleted nothing: the claim is still ours to retry or abandon."""
    session.info.pop(_RELEASING, None)


def is_busy(error: OperationalError) -> bool:
    """SQLite's write lock stayed taken past busy_timeout: worth retrying a moment later.

    Never true on PostgreSQL, where a refresh's writes are covered by its row lock.
    """
    return uses_leases() and _is_lock_timeout(error)


def may_store(connection_id: int, used: dict[str, bytes]) -> bool:
    """Whether a refresh that sent ``used`` may store the provider's answer now.

    Ends the lease (:func:`release`) in the storing transaction. True while the lease was
    still ours, and when it lapsed but no other refresh has stored tokens since: a rotated
    refresh token is then kept rather than lost. Always True on PostgreSQL.
    """
    return release(connection_id) or fingerprint(connection_id) == used


def abandon(connection_id: int) -> None:
    """Give up this session's lease after an error (its own short transaction); no-op if none.

    Best effort: when even that fails (the database went away), the lease lapses by itself.
    """
    if connection_id not in db.session.info.get(_LEASES, {}):
        return
    try:
        db.session.rollback()
        release(connection_id)
        db.session.commit()
    except Exception:  # noqa: BLE001 - the caller is already handling the first error
        db.session.rollback()


def _claim_lease(connection_id: int, timeout: float) -> bool:
    """Claim the connection's lease, waiting up to ``timeout`` s; False: no such connection."""
    claim = secrets.token_hex(16)
    duration = timedelta(
        seconds=LEASE_LOCK_TIMEOUTS * current_app.config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"]
    )
    deadline = time.monotonic() + timeout
    while True:
        now = token_vault.clock()
        statement = sqlite_insert(RefreshLease).values(
            connection_id=connection_id, claim=claim, expires_at=now + duration
        )
        statement = statement.on_conflict_do_update(
            index_elements=[RefreshLease.connection_id],
            set_={"claim": statement.excluded.claim, "expires_at": statement.excluded.expires_at},
            where=RefreshLease.expires_at <= now,  # a lapsed lease (crashed holder) is taken
        )
        try:
            db.session.execute(statement)
        except IntegrityError:  # the foreign key: no such connection
            db.session.rollback()
            return False
        except OperationalError as error:  # the write lock stayed busy past busy_timeout
            db.session.rollback()
            if _is_lock_timeout(error):
                raise LockTimeout() from None
            raise
        holder = db.session.scalar(
            select(RefreshLease.claim).where(RefreshLease.connection_id == connection_id)
        )
        db.session.commit()  # the short write transaction ends here: nothing is held
        if holder == claim:
            db.session.info.setdefault(_LEASES, {})[connection_id] = claim
            return True
        if time.monotonic() >= deadline:
            raise LockTimeout()
        time.sleep(LEASE_POLL_SECONDS)


def _is_lock_timeout(error: OperationalError) -> bool:
    if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
        return True
    return "database is locked" in str(error.orig)


def read_tokens(connection: Connection) -> dict[str, Token]:
    """The connection's stored rows by kind, read afresh from the database."""
    rows = db.session.scalars(
        select(Token)
        .where(
            Token.connection_id == connection.id,
            Token.kind.in_([kind.value for kind in _REFRESHABLE_KINDS]),
        )
        .execution_options(populate_existing=True)
    )
    return {row.kind: row for row in rows}


def access_token(connection_id: int) -> Token | None:
    """The stored access-token row, or None."""
    return db.session.scalar(
        select(Token).where(
            Token.connection_id == connection_id, Token.kind == TokenKind.ACCESS.value
        )
    )


def fingerprint(
    connection_id: int, kinds: tuple[TokenKind, ...] = REFRESH_KINDS
) -> dict[str, bytes]:
    """The ciphertexts of ``kinds`` (default: access and refresh) as committed now.

    Every store encrypts afresh, so they change with every refresh, reconnect or new key.
    """
    rows = db.session.execute(
        select(Token.kind, Token.ciphertext).where(
            Token.connection_id == connection_id,
            Token.kind.in_([kind.value for kind in kinds]),
        )
    )
    return {kind: bytes(ciphertext) for kind, ciphertext in rows}


def ciphertexts(
    tokens: dict[str, Token], kinds: tuple[TokenKind, ...] = REFRESH_KINDS
) -> dict[str, bytes]:
    """Like :func:`fingerprint`, from rows already read."""
    return {
        kind.value: bytes(tokens[kind.value].ciphertext)
        for kind in kinds
        if kind.value in tokens
    }


def usable(token: Token | None, now: datetime | None = None) -> bool:
    """True for a valid token that has not expired (unknown expiry counts as unexpired)."""
    if token is None or not token.is_valid:
        return False
    return token.expires_at is None or token.expires_at > (now or token_vault.clock())
