"""The TokenVault service: the only code that encrypts or decrypts stored values.

Methods add to and flush the current SQLAlchemy session but never commit: the caller owns
the transaction, so a refresh can store a new access token and a rotated refresh token
together, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, cast

from flask import Flask, current_app
from sqlalchemy import ColumnElement, CursorResult, and_, bindparam, delete, or_, select, update

from vault.crypto import DecryptionError, TokenCipher
from vault.extensions import db
from vault.models import Connection, ConnectionStatus, Token, TokenKind, token_aad, utcnow

__all__ = [
    "AccessToken",
    "AccessTokenRow",
    "NeedsReconnect",
    "Refresher",
    "TokenUnavailable",
    "TokenVault",
    "token_vault",
]

MAX_ERROR_LENGTH = 500


class TokenUnavailable(Exception):
    """No usable access token can be handed out right now (expired, or none stored)."""


class NeedsReconnect(TokenUnavailable):
    """The connection's grant is gone; a person must connect the account again."""


class Refresher(Protocol):
    """The seam the refresh engine plugs into (``vault.refresh.engine``).

    ``refresh(connection)`` obtains new tokens from the provider, stores them through the
    vault and commits, or raises :class:`TokenUnavailable` / :class:`NeedsReconnect`.
    """

    def refresh(self, connection: Connection) -> None: ...


@dataclass(frozen=True)
class AccessToken:
    """An access token as handed to an integration."""

    value: str
    token_type: str
    expires_at: datetime | None

    def __repr__(self) -> str:  # never the token itself
        return f"<AccessToken ...{self.value[-4:]} expires_at={self.expires_at}>"


@dataclass(frozen=True)
class AccessTokenRow:
    """A connection's provider and status with its access-token row (if any), as read."""

    connection_id: int
    provider: str
    status: str
    ciphertext: bytes | None
    is_valid: bool
    expires_at: datetime | None
    # Whether the token can be handed out as it is (:func:`ready_to_hand_out`, decided in SQL).
    ready: bool = False


_connections, _tokens = Connection.__table__, Token.__table__


def ready_to_hand_out() -> ColumnElement[bool]:
    """SQL condition on a connection outer-joined with its access-token row: the token can be
    handed out as it is, without a refresh or a check.

    The connection is active and its access token valid, with an unknown expiry or one after
    the bound parameter ``ready_after`` (now + the refresh buffer). The one place this is
    decided: :meth:`TokenVault.ready_access_token` reads it, and the token API's one-statement
    hand-out (``vault.services.handout``) hands out only the rows it admits.
    """
    return and_(
        _connections.c.status == ConnectionStatus.ACTIVE.value,
        _tokens.c.ciphertext.is_not(None),
        _tokens.c.is_valid.is_(True),
        or_(_tokens.c.expires_at.is_(None), _tokens.c.expires_at > bindparam("ready_after")),
    )


# The token API's hot path, built once: plain columns, so reading it makes no ORM objects.
_ACCESS_TOKEN_ROW = (
    select(
        _connections.c.id,
        _connections.c.provider,
        _connections.c.status,
        _tokens.c.ciphertext,
        _tokens.c.is_valid,
        _tokens.c.expires_at,
        ready_to_hand_out().label("ready"),
    )
    .select_from(
        _connections.outerjoin(
            _tokens,
            and_(
                _tokens.c.connection_id == _connections.c.id,
                _tokens.c.kind == TokenKind.ACCESS.value,
            ),
        )
    )
    .where(_connections.c.id == bindparam("connection_id"))
)


class TokenVault:
    """Stores, reads and finds encrypted tokens; bound to an app with :meth:`init_app`."""

    def __init__(self, app: Flask | None = None, *, clock: Callable[[], datetime] = utcnow):
        self.clock = clock
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, refresher: Refresher | None = None) -> None:
        """Build the cipher from the app's secrets (checked here) and register the service."""
        cipher = TokenCipher(
            app.config["ENCRYPTION_SECRET"], previous=app.config["ENCRYPTION_SECRET_PREVIOUS"]
        )
        app.extensions["token_vault"] = _AppState(cipher=cipher, refresher=refresher)

    @property
    def _state(self) -> _AppState:
        return current_app.extensions["token_vault"]

    @property
    def cipher(self) -> TokenCipher:
        """The current app's cipher."""
        return self._state.cipher

    def set_refresher(self, refresher: Refresher | None, app: Flask | None = None) -> None:
        """Plug in (or remove) the refresh engine for an app."""
        (app or current_app).extensions["token_vault"].refresher = refresher

    # -- writing -----------------------------------------------------------------------

    def store(
        self,
        connection: Connection,
        kind: TokenKind | str,
        value: str,
        *,
        expires_at: datetime | None = None,
        existing: Token | None = None,
        flush: bool = True,
    ) -> Token:
        """Encrypt ``value`` as the connection's token of ``kind``, replacing any old one.

        ``existing``: the connection's current row of ``kind``, when the caller has just read
        it in this transaction (the refresh engine, under the row lock): saves a SELECT.
        ``flush=False`` leaves the write to the caller's next flush or commit, so that a
        refresh sends its changes in one flush instead of one per token.
        """
        kind = TokenKind(kind).value
        if not value:
            raise ValueError(f"refusing to store an empty {kind} token")
        if connection.id is None:
            db.session.add(connection)
            db.session.flush()
        now = self.clock()
        token: Token | None
        if existing is not None:
            if existing.connection_id != connection.id or existing.kind != kind:
                raise ValueError("existing must be this connection's row of that kind")
            token = existing
        else:
            token = db.session.scalar(
                select(Token).where(Token.connection_id == connection.id, Token.kind == kind)
            )
        if token is None:
            token = Token(connection_id=connection.id, kind=kind)
            db.session.add(token)
        token.ciphertext = self.cipher.encrypt(value, aad=connection.aad(kind))
        token.key_id = self.cipher.current_key_id
        token.expires_at = expires_at
        token.is_valid = True
        token.last_refreshed_at = now
        if flush:
            db.session.flush()
        return token

    def mark_invalid(
        self,
        connection: Connection,
        reason: str,
        *,
        status: ConnectionStatus = ConnectionStatus.NEEDS_RECONNECT,
    ) -> None:
        """Flag the connection (default: needs reconnect) and its tokens as unusable."""
        connection.status = ConnectionStatus(status).value
        connection.last_error = sanitize_error(reason)
        connection.next_refresh_at = None
        db.session.execute(
            update(Token).where(Token.connection_id == connection.id).values(is_valid=False)
        )
        db.session.flush()

    def delete(self, connection: Connection, kinds: Iterable[TokenKind | str] | None = None) -> int:
        """Delete the connection's stored values (all kinds unless given); returns how many."""
        statement = delete(Token).where(Token.connection_id == connection.id)
        if kinds is not None:
            statement = statement.where(Token.kind.in_([TokenKind(k).value for k in kinds]))
        deleted = cast(CursorResult, db.session.execute(statement)).rowcount
        db.session.expire(connection, ["tokens"])
        return deleted

    # -- reading -----------------------------------------------------------------------

    def token(self, connection: Connection, kind: TokenKind | str) -> Token | None:
        """The stored (encrypted) row of one kind, or None."""
        return db.session.scalar(
            select(Token).where(
                Token.connection_id == connection.id, Token.kind == TokenKind(kind).value
            )
        )

    def get(self, connection: Connection, kind: TokenKind | str) -> str | None:
        """Decrypt the connection's token of ``kind``; None when there is none.

        Raises :class:`~vault.crypto.DecryptionError` when the stored value is undecryptable.
        """
        token = self.token(connection, kind)
        return None if token is None else self.decrypt(token)

    def decrypt(self, token: Token) -> str:
        """Decrypt one token row, checking it belongs to its connection and kind."""
        return self.cipher.decrypt(token.ciphertext, aad=token_aad(token.connection_id, token.kind))

    def read_access_token_row(
        self, connection_id: int, buffer: timedelta | int | None = None
    ) -> AccessTokenRow | None:
        """The connection and its access-token row in one query; None: no such connection.

        ``ready`` says whether the token can be handed out as it is, with ``buffer``
        (default ``VAULT_REFRESH_BUFFER_SECONDS``) to spare.
        """
        parameters = {"connection_id": connection_id, "ready_after": self.ready_after(buffer)}
        row = db.session.connection().execute(_ACCESS_TOKEN_ROW, parameters).one_or_none()
        if row is None:
            return None
        return AccessTokenRow(row.id, row.provider, row.status, row.ciphertext, row.is_valid,
                              row.expires_at, ready=bool(row.ready))

    def ready_after(self, buffer: timedelta | int | None = None) -> datetime:
        """The ``ready_after`` parameter of :func:`ready_to_hand_out`: now + the buffer."""
        return self.clock() + self._buffer(buffer)

    def ready_access_token(self, row: AccessTokenRow) -> AccessToken | None:
        """``row``'s token when it can be handed out as it is, without a refresh or a check.

        None when anything needs :meth:`get_access_token`'s full treatment: a connection
        that is not active, no valid access token, or one expiring within the buffer
        (``row.ready``, decided in SQL by :func:`ready_to_hand_out`).
        """
        if not row.ready or row.ciphertext is None:
            return None
        return self.access_token(row.connection_id, row.ciphertext, row.expires_at)

    def access_token(
        self, connection_id: int, ciphertext: bytes, expires_at: datetime | None
    ) -> AccessToken:
        """Decrypt a connection's access-token ciphertext, read without the ORM, to hand out."""
        aad = token_aad(connection_id, TokenKind.ACCESS.value)
        value = self.cipher.decrypt(ciphertext, aad=aad)
        return AccessToken(value=value, token_type="Bearer", expires_at=expires_at)

    def get_access_token(
        self,
        connection: Connection,
        buffer: timedelta | int | None = None,
    ) -> AccessToken:
        """A usable access token, refreshed first when it expires within ``buffer``.

        ``buffer`` defaults to ``VAULT_REFRESH_BUFFER_SECONDS``. A token whose expiry is
        unknown is handed out as it is. Raises :class:`NeedsReconnect` or
        :class:`TokenUnavailable` when no usable token can be had.
        """
        buffer = self._buffer(buffer)
        if connection.status == ConnectionStatus.NEEDS_RECONNECT.value:
            raise NeedsReconnect(connection.last_error or "the account must be connected again")
        if connection.status == ConnectionStatus.DISCONNECTED.value:
            raise TokenUnavailable("the connection is disconnected")

        token = self.token(connection, TokenKind.ACCESS)
        if token is None:
            # API-key connections with nothing to exchange (Voicenter, WhatsApp): the key is
            # what integrations authenticate with, so it is what they are handed.
            api_key = self.token(connection, TokenKind.API_KEY)
            if api_key is not None and self.token(connection, TokenKind.API_SECRET) is None:
                token = api_key
        if self._needs_refresh(token, buffer):
            refresher = self._state.refresher
            if refresher is not None:
                refresher.refresh(connection)
                db.session.refresh(connection)
                token = self.token(connection, TokenKind.ACCESS)
        if token is None or not token.is_valid:
            raise TokenUnavailable("no valid access token is stored")
        if token.expires_at is not None and token.expires_at <= self.clock():
            raise TokenUnavailable("the access token has expired and could not be refreshed")
        return AccessToken(
            value=self.decrypt(token), token_type="Bearer", expires_at=token.expires_at
        )

    def _needs_refresh(self, token: Token | None, buffer: timedelta) -> bool:
        if token is None or not token.is_valid:
            return True
        if token.kind == TokenKind.API_KEY.value:
            return False  # a pasted key cannot be refreshed; its expiry is the owner's to watch
        return self._due(token.expires_at, buffer)

    def _due(self, expires_at: datetime | None, buffer: timedelta) -> bool:
        return expires_at is not None and expires_at <= self.clock() + buffer

    @staticmethod
    def _buffer(buffer: timedelta | int | None) -> timedelta:
        if buffer is None:
            buffer = current_app.config["VAULT_REFRESH_BUFFER_SECONDS"]
        return buffer if isinstance(buffer, timedelta) else timedelta(seconds=buffer)


@dataclass
class _AppState:
    cipher: TokenCipher
    refresher: Refresher | None


def sanitize_error(reason: str) -> str:
    """A short, single-line error text safe to store and show (the caller strips secrets)."""
    text = " ".join(str(reason).split())
    return text[:MAX_ERROR_LENGTH]


token_vault = TokenVault()

# DecryptionError is part of this module's vocabulary for callers of get()/decrypt().
__all__ += ["DecryptionError"]
