"""The database side of the refresh protocol: row locks and fresh reads of token rows.

Every read here bypasses the session's identity map (``populate_existing``), because the
whole point is to see what another worker or process committed meanwhile.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from vault.extensions import db
from vault.models import Connection, Token, TokenKind
from vault.tokens.store import token_vault

_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL SQLSTATE raised when lock_timeout expires
_REFRESHABLE_KINDS = (TokenKind.ACCESS, TokenKind.REFRESH, TokenKind.API_KEY, TokenKind.API_SECRET)


class LockTimeout(Exception):
    """Another transaction held the connection's row lock for too long."""


def lock_row(connection_id: int, *, timeout: float) -> Connection | None:
    """Lock the connection's row for this transaction and return it, freshly read.

    Raises :class:`LockTimeout` when another transaction holds it longer than ``timeout``
    seconds (PostgreSQL; SQLite waits its ``busy_timeout``).
    """
    try:
        if db.session.get_bind().dialect.name == "postgresql":
            milliseconds = int(timeout * 1000)
            db.session.execute(text(f"SET LOCAL lock_timeout = '{milliseconds}ms'"))
        else:
            # SQLite: the first write takes the database's write lock (waiting up to its
            # busy_timeout), which serialises refreshes across processes.
            db.session.execute(
                update(Connection)
                .where(Connection.id == connection_id)
                .values(updated_at=token_vault.clock())
                .execution_options(synchronize_session=False)
            )
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


def fingerprint(connection_id: int) -> dict[str, bytes]:
    """The access and refresh ciphertexts as committed now: they change with every refresh."""
    rows = db.session.execute(
        select(Token.kind, Token.ciphertext).where(
            Token.connection_id == connection_id,
            Token.kind.in_([TokenKind.ACCESS.value, TokenKind.REFRESH.value]),
        )
    )
    return {kind: bytes(ciphertext) for kind, ciphertext in rows}


def ciphertexts(tokens: dict[str, Token]) -> dict[str, bytes]:
    """Like :func:`fingerprint`, from rows already read."""
    return {
        kind: bytes(tokens[kind].ciphertext)
        for kind in (TokenKind.ACCESS.value, TokenKind.REFRESH.value)
        if kind in tokens
    }


def usable(token: Token | None, now: datetime | None = None) -> bool:
    """True for a valid token that has not expired (unknown expiry counts as unexpired)."""
    if token is None or not token.is_valid:
        return False
    return token.expires_at is None or token.expires_at > (now or token_vault.clock())
