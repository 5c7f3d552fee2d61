"""Grants: how a connection gets a new access token, and the one answer to "can it?".

Every connection has exactly one grant, chosen from its provider's configuration and the
kinds of values stored for it (never their contents):

=====================  =================================================================
grant                  renewable when
=====================  =================================================================
refresh token          an OAuth connection with a stored refresh token that the provider
                       has not refused and that has not expired
client credentials     an OAuth provider with ``grant_type = "client_credentials"``, when no
                       usable refresh token is stored (a usable one takes precedence)
key exchange           an API-key provider with a ``token_url`` (GreenInvoice) and both the
                       key and its secret stored
JWT bearer             a service account with its key file stored, or an ``oauth2`` provider
                       with ``grant_type = "jwt_bearer"`` (its key is in the providers file):
                       renewing is signing a new assertion
none                   anything else: the connection says why, has no Refresh button and
                       is never claimed by ``refresh-due``
=====================  =================================================================

A disconnected connection, or one whose grant the provider refused, has no grant either.
:func:`vault.grants.kinds.credential_kind` says, from the provider alone, what kind of
credential a connection is (person, client credentials, service account, device, API key).
:func:`grant_for` answers in Python (detail page, refresh engine), :func:`renewable_clause`
the same in SQL (dashboard counts and lists, ``refresh-due``'s claim); the test matrix in
``tests/test_grants.py`` holds them to each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar, Protocol

from sqlalchemy import ColumnElement, and_, bindparam, exists, or_

from vault.models import ConnectionStatus, TokenKind
from vault.oauth import service_accounts, tokens
from vault.oauth.tokens import NewTokens
from vault.providers.registry import SERVICE_ACCOUNT, Provider, ProviderRegistry

__all__ = [
    "ClientCredentialsGrant",
    "Credentials",
    "Grant",
    "GrantProviders",
    "JwtBearerGrant",
    "KeyExchangeGrant",
    "NoGrant",
    "NotRefreshable",
    "RefreshTokenGrant",
    "StoredRows",
    "StoredValues",
    "due_at",
    "grant_for",
    "renewable_clause",
]

_GONE = (ConnectionStatus.DISCONNECTED.value, ConnectionStatus.NEEDS_RECONNECT.value)


class NotRefreshable(Exception):
    """Nothing stored or configured for the connection can obtain a new access token."""


@dataclass(frozen=True)
class Credentials:
    """The decrypted values a grant may use (never logged: no repr of values)."""

    refresh_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    # A service account's stored key file, and the scopes its connection asks for.
    private_key: str | None = field(default=None, repr=False)
    scope: str | None = None


class _TokenRow(Protocol):
    kind: str
    is_valid: bool
    expires_at: datetime | None


@dataclass(frozen=True)
class StoredValues:
    """Which values a connection has stored, and the refresh token's state; no contents."""

    kinds: frozenset[str] = frozenset()
    refresh_token_valid: bool = False
    refresh_token_expires_at: datetime | None = None
    # Read by the reconnect-by rules (vault/grants/limits.py).
    access_token_expires_at: datetime | None = None
    api_key_expires_at: datetime | None = None

    @classmethod
    def of(cls, rows: Iterable[_TokenRow]) -> StoredValues:
        """From a connection's token rows (ORM objects or plain rows)."""
        by_kind = {row.kind: row for row in rows}
        refresh = by_kind.get(TokenKind.REFRESH.value)
        access = by_kind.get(TokenKind.ACCESS.value)
        api_key = by_kind.get(TokenKind.API_KEY.value)
        return cls(
            kinds=frozenset(by_kind),
            refresh_token_valid=refresh is not None and bool(refresh.is_valid),
            refresh_token_expires_at=refresh.expires_at if refresh is not None else None,
            access_token_expires_at=access.expires_at if access is not None else None,
            api_key_expires_at=api_key.expires_at if api_key is not None else None,
        )

    def has(self, kind: TokenKind) -> bool:
        """Whether a value of ``kind`` is stored."""
        return kind.value in self.kinds


class Grant:
    """How one connection obtains a new access token."""

    name: ClassVar[str]
    label: ClassVar[str]  # how the detail page says what renews it
    renewable: ClassVar[bool] = True
    # Why the connection cannot be renewed, in words for staff (None when it can).
    reason: str | None = None
    # Whether only a person (reconnecting) can make it work again.
    needs_person: bool = False

    def request(self, provider: Provider, credentials: Credentials, *, now: datetime) -> NewTokens:
        """Ask the provider for new tokens; raises the errors of :mod:`vault.oauth.errors`."""
        raise NotImplementedError


class RefreshTokenGrant(Grant):
    """RFC 6749 section 6: the stored refresh token buys new tokens (maybe a new one too)."""

    name = "refresh_token"
    label = "its refresh token"

    def request(self, provider: Provider, credentials: Credentials, *, now: datetime) -> NewTokens:
        """Present the stored refresh token."""
        if not credentials.refresh_token:
            raise NotRefreshable("no refresh token is stored; connect the account again")
        return tokens.refresh_token_grant(provider, credentials.refresh_token, now=now)


class ClientCredentialsGrant(Grant):
    """RFC 6749 section 4.4: the app's own client id and secret buy a token."""

    name = "client_credentials"
    label = "the app's client credentials"

    def request(self, provider: Provider, credentials: Credentials, *, now: datetime) -> NewTokens:
        """Authenticate as the client."""
        return tokens.client_credentials_grant(provider, now=now)


class KeyExchangeGrant(Grant):
    """A pasted key id and secret traded for a short-lived token (GreenInvoice)."""

    name = "key_exchange"
    label = "exchanging its API key and secret"

    def request(self, provider: Provider, credentials: Credentials, *, now: datetime) -> NewTokens:
        """Trade the stored key pair."""
        if not (credentials.api_key and credentials.api_secret):
            raise NotRefreshable("the API key and its secret are not both stored")
        return tokens.exchange_api_key(
            provider, credentials.api_key, credentials.api_secret, now=now
        )


class JwtBearerGrant(Grant):
    """RFC 7523 section 2.1: an assertion signed with a private key buys a token.

    A service account signs with its uploaded key file (Google's claims); an ``oauth2``
    provider with ``grant_type = "jwt_bearer"`` with the key of the providers file.
    """

    name = "jwt_bearer"
    label = "signing a new assertion with its private key"

    def request(self, provider: Provider, credentials: Credentials, *, now: datetime) -> NewTokens:
        """Sign a new assertion and present it."""
        if provider.type != SERVICE_ACCOUNT:
            return service_accounts.provider_assertion_token(provider, now=now)
        if not credentials.private_key:
            raise NotRefreshable("no key file is stored; upload the service account's key")
        return service_accounts.service_account_token(
            provider, credentials.private_key, credentials.scope or provider.scope, now=now
        )


@dataclass(frozen=True)
class NoGrant(Grant):
    """Nothing can renew the connection; ``reason`` says why."""

    name: ClassVar[str] = "none"
    label: ClassVar[str] = "nothing"
    renewable: ClassVar[bool] = False
    reason: str | None = None
    needs_person: bool = False

    def request(self, provider: Provider, credentials: Credentials, *, now: datetime) -> NewTokens:
        """Always refuses: there is nothing to ask the provider with."""
        raise NotRefreshable(self.reason or "nothing stored can renew this connection")


def grant_for(
    provider_key: str,
    provider: Provider | None,
    status: str,
    stored: StoredValues,
    now: datetime,
) -> Grant:
    """The grant that renews a connection, or a :class:`NoGrant` saying why none can."""
    if status == ConnectionStatus.DISCONNECTED.value:
        return NoGrant("the connection is disconnected")
    if status == ConnectionStatus.NEEDS_RECONNECT.value:
        return NoGrant("the provider refused the grant; connect the account again", True)
    if provider is None:
        return NoGrant(f"provider {provider_key} is no longer in the providers file")
    if provider.type == SERVICE_ACCOUNT:
        if stored.has(TokenKind.PRIVATE_KEY):
            return JwtBearerGrant()
        return NoGrant("no key file is stored; upload the service account's JSON key", True)
    if provider.uses_jwt_bearer:
        return JwtBearerGrant()  # the providers file's key signs; nothing stored is needed
    if provider.is_oauth:
        refused = _refresh_token_refusal(stored, now) if stored.has(TokenKind.REFRESH) else None
        if stored.has(TokenKind.REFRESH) and refused is None:
            return RefreshTokenGrant()
        if provider.uses_client_credentials:
            return ClientCredentialsGrant()  # the client secret needs no refresh token
        return refused or NoGrant("no refresh token is stored; connect the account again", True)
    if provider.token_url and stored.has(TokenKind.API_KEY) and stored.has(TokenKind.API_SECRET):
        return KeyExchangeGrant()
    return NoGrant("its API key is used as it is; replace the credentials when they change")


def _refresh_token_refusal(stored: StoredValues, now: datetime) -> NoGrant | None:
    """Why the stored refresh token cannot be used, or None when it can."""
    if not stored.refresh_token_valid:
        return NoGrant("the provider refused the refresh token; connect the account again", True)
    expires = stored.refresh_token_expires_at
    if expires is not None and expires <= now:
        return NoGrant(f"the refresh token expired {expires:%Y-%m-%d %H:%M} UTC; connect the "
                       "account again", True)
    return None


def due_at(
    renewable: bool,
    expires_at: datetime | None,
    backing_off_until: datetime | None,
    buffer: timedelta,
) -> datetime | None:
    """When the next refresh is due: ``buffer`` before expiry, or after a back-off.

    None when the connection cannot be renewed, or its expiry is unknown (nothing is due).
    """
    if not renewable or expires_at is None:
        return None
    due = expires_at - buffer
    return max(due, backing_off_until) if backing_off_until is not None else due


@dataclass(frozen=True)
class GrantProviders:
    """The configured provider keys by the grant they allow, for the SQL clause."""

    oauth: list[str]
    client_credentials: list[str]
    key_exchange: list[str]
    service_account: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, registry: ProviderRegistry) -> GrantProviders:
        """Read from the providers file's registry."""
        return cls(
            oauth=[p.key for p in registry if p.is_oauth],
            client_credentials=[p.key for p in registry if p.uses_client_credentials],
            key_exchange=[p.key for p in registry if p.type == "api_key" and p.token_url],
            service_account=[p.key for p in registry if p.type == SERVICE_ACCOUNT],
        )

    def params(self) -> dict[str, list[str]]:
        """Values for the bound parameters of :func:`renewable_clause` without ``providers``."""
        return {
            "oauth_providers": self.oauth,
            "client_credentials_providers": self.client_credentials,
            "key_exchange_providers": self.key_exchange,
            "service_account_providers": self.service_account,
        }


class StoredRows:
    """How a SQL statement sees a connection's token rows, for :func:`renewable_clause`.

    Two physical forms of the same logic: :meth:`copied` for a statement over many
    connections (the dashboard's lists, counts and health, which read the copies the
    triggers keep on ``connections``), :meth:`correlated` for one that looks the rows up
    (the ``refresh-due`` claim, which walks the access tokens by expiry and looks the other
    kinds up per row, a plan that stays cheap whatever the table's statistics say): reading
    ``tokens`` itself, it stays independent of the copies, and the tests hold the two to
    each other.
    """

    def __init__(self, has: Callable[[TokenKind, Callable[[Any], list[Any]]], Any]):
        self._has = has

    @classmethod
    def correlated(cls, connections: Any, tokens: Any) -> StoredRows:
        """``EXISTS`` subqueries on ``tokens``, correlated to ``connections``."""

        def has(kind: TokenKind, conditions: Callable[[Any], list[Any]]) -> Any:
            row = tokens.alias(f"stored_{kind.value}")
            return exists().where(
                row.c.connection_id == connections.c.id,
                row.c.kind == kind.value,
                *conditions(row),
            )

        return cls(has)

    @classmethod
    def copied(cls, connections: Any) -> StoredRows:
        """The copies of the token rows' facts on ``connections`` itself, kept by the
        triggers on ``tokens`` (:data:`vault.count_triggers.TOKEN_COPIES`): no lookup in
        ``tokens`` at all, so a statement over many connections reads one table.

        The refresh token is the one kind whose rows are checked (validity, expiry); the
        others are only ever asked whether they are there.
        """
        columns = connections.c
        refresh = SimpleNamespace(c=SimpleNamespace(
            is_valid=columns.refresh_token_valid, expires_at=columns.refresh_token_expires_at))
        present = {
            TokenKind.API_KEY: columns.has_api_key,
            TokenKind.API_SECRET: columns.has_api_secret,
            TokenKind.PRIVATE_KEY: columns.has_private_key,
        }

        def has(kind: TokenKind, conditions: Callable[[Any], list[Any]]) -> Any:
            if kind is TokenKind.REFRESH:
                return and_(columns.refresh_token_valid.is_not(None), *conditions(refresh))
            assert not conditions(None), f"only whether a {kind.value} is stored is copied"
            return present[kind].is_(True)

        return cls(has)

    def has(self, kind: TokenKind, conditions: Callable[[Any], list[Any]] = lambda row: []) -> Any:
        """True where the connection has a row of ``kind`` meeting ``conditions``."""
        return self._has(kind, conditions)


def renewable_clause(
    connections: Any,
    stored: StoredRows,
    *,
    now: Any,
    providers: GrantProviders | None = None,
) -> ColumnElement[bool]:
    """:func:`grant_for`'s answer as SQL: true where the connection can be renewed.

    ``connections`` is the connections table (or an alias), ``stored`` how the statement
    sees its token rows. ``now`` is a datetime or a bound parameter. With ``providers`` the
    provider lists are inlined; without, they are the expanding bound parameters of
    :meth:`GrantProviders.params`, so that a statement built once serves every providers
    file.
    """

    def keys(name: str) -> Any:
        # Inlined lists, or an expanding bound parameter of the same name.
        if providers is None:
            return bindparam(name, expanding=True)
        return getattr(providers, name.removesuffix("_providers"))

    def usable(row: Any) -> list[Any]:
        return [row.c.is_valid.is_(True), or_(row.c.expires_at.is_(None), row.c.expires_at > now)]

    return and_(
        connections.c.status.not_in(_GONE),
        or_(
            and_(
                connections.c.provider.in_(keys("oauth_providers")),
                stored.has(TokenKind.REFRESH, usable),
            ),
            # A usable refresh token goes first (the branch above); without one, the client
            # secret gets a token.
            connections.c.provider.in_(keys("client_credentials_providers")),
            and_(
                connections.c.provider.in_(keys("key_exchange_providers")),
                stored.has(TokenKind.API_KEY),
                stored.has(TokenKind.API_SECRET),
            ),
            # jwt_bearer oauth2 providers are in the client-credentials list: always renewable.
            and_(
                connections.c.provider.in_(keys("service_account_providers")),
                stored.has(TokenKind.PRIVATE_KEY),
            ),
        ),
    )

