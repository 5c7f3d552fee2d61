"""Connections: recording an OAuth grant, API-key credentials, and disconnecting.

Views call these; they add to the session and the caller commits once, so a failure part
way leaves nothing half-written.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from vault import audit
from vault.extensions import db
from vault.grants import (
    ClientCredentialsGrant,
    Credentials,
    JwtBearerGrant,
    NotRefreshable,
    StoredValues,
    grant_for,
)
from vault.grants.limits import Deadline, apply_reconnect_deadline
from vault.models import (
    AccessLink,
    Connection,
    ConnectionStatus,
    LinkKind,
    Token,
    TokenKind,
    User,
    utcnow,
)
from vault.oauth import tokens
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.lifetimes import lifetime_end
from vault.oauth.tokens import NewTokens
from vault.providers.registry import Provider
from vault.redact import redact_known
from vault.services.ownership import default_owner
from vault.tokens.store import DecryptionError, token_vault


class ConnectError(Exception):
    """A connect flow cannot be completed; the message is safe to show (no secrets)."""


@dataclass(frozen=True)
class Account:
    """Who the tokens belong to, as the provider tells it."""

    subject: str
    email: str | None
    name: str | None


def account_from_claims(claims: dict[str, Any]) -> Account:
    """The account from id_token claims or a userinfo answer (OIDC ``sub`` or OAuth ``id``)."""
    subject = claims.get("sub") or claims.get("id") or claims.get("user_id")
    if subject in (None, ""):
        raise ConnectError("The provider did not say which account was connected.")
    email = claims.get("email")
    name = claims.get("name") or claims.get("login") or claims.get("preferred_username")
    return Account(
        subject=str(subject)[:255],
        email=str(email)[:320] if email else None,
        name=str(name)[:255] if name else None,
    )


def record_grant(
    provider: Provider, token: dict[str, Any], account: Account, user: User | None,
    *, actor: str | None = None, owner: str | None = None,
) -> tuple[Connection, bool]:
    """Upsert the connection for ``account`` and store the grant's tokens, encrypted.

    Reconnecting the same account replaces its tokens (a refresh token is kept when the
    provider sends no new one). Returns the connection and whether it is new. ``user`` is
    the staff member it is recorded for (None: ``created_by`` is left as it was, e.g. an
    owner reconnecting through a link); ``actor`` names the audit's actor when not ``user``.
    A new connection's owner is ``owner`` (a connect link's e-mail) or else ``user``; a
    reconnect keeps the owner it has.
    """
    now = utcnow()
    existing = db.session.scalar(
        select(Connection).where(
            Connection.provider == provider.key, Connection.account_subject == account.subject
        )
    )
    created = existing is None
    connection = existing or Connection(provider=provider.key, account_subject=account.subject)
    if created:
        connection.owner_email = default_owner(user, owner)
        db.session.add(connection)
    connection.account_email = account.email
    connection.account_name = account.name
    connection.scopes_requested = provider.scope
    granted = token.get("scope")
    if isinstance(granted, list | tuple):
        granted = " ".join(granted)
    # RFC 6749 5.1: an answer without "scope" granted exactly what was asked.
    connection.scopes_granted = granted if granted is not None else provider.scope
    connection.status = ConnectionStatus.ACTIVE.value
    if user is not None:
        connection.created_by_id = user.id
    connection.failure_count = 0
    connection.last_error = None
    connection.last_refreshed_at = now
    connection.next_refresh_at = None
    connection.consented_at = now
    db.session.flush()

    token_vault.store(
        connection, TokenKind.ACCESS, token["access_token"],
        expires_at=lifetime_end(now, token.get("expires_in")),
    )
    if token.get("refresh_token"):
        token_vault.store(
            connection, TokenKind.REFRESH, token["refresh_token"],
            expires_at=lifetime_end(now, token.get("refresh_token_expires_in")),
        )
    elif _spent_refresh_token(connection, provider, now):
        # A refused or expired refresh token would keep the connection unrenewable after
        # the very reconnect that was meant to fix it; the client-credentials grant needs
        # none at all.
        token_vault.delete(connection, [TokenKind.REFRESH])
    if token.get("id_token"):
        token_vault.store(connection, TokenKind.ID, token["id_token"])
    update_reconnect_by(connection, provider, now)
    if not created:
        void_reconnect_links(connection, now, "the connection was reconnected")
    audit.record(
        "connection.created" if created else "connection.reconnected",
        target=f"{provider.key}:{account.email or account.subject}",
        connection=connection,
        actor=actor or user,
    )
    return connection, created


# revoked_by of a link the vault voided itself (its connection was reconnected or switched
# off), told apart from an admin's e-mail on the link's page and in lists.
LINK_VOIDED_BY = "vault"


def void_reconnect_links(connection: Connection, now: datetime, why: str) -> int:
    """Revoke ``connection``'s open reconnect links, audited; not committed.

    A reconnect link is for one breakage: once the connection is active again by other
    means, or switched off, it must not come back to life when the connection breaks
    again (docs/security.md). The link a reconnect is made through is consumed first and
    so is not counted. Returns how many were revoked.
    """
    open_links = (
        AccessLink.connection_id == connection.id,
        AccessLink.kind == LinkKind.RECONNECT.value,
        AccessLink.used_at.is_(None),
        AccessLink.revoked_at.is_(None),
        AccessLink.expires_at > now,
    )
    ids = db.session.scalars(select(AccessLink.id).where(*open_links)).all()
    if not ids:
        return 0
    db.session.execute(
        update(AccessLink).where(AccessLink.id.in_(ids), *open_links)
        .values(revoked_at=now, revoked_by=LINK_VOIDED_BY)
        .execution_options(synchronize_session="fetch")
    )
    account = connection.account_email or connection.account_subject
    for link_id in ids:
        audit.record(
            "reconnect_link.revoked", target=f"{connection.provider}:{account}",
            connection=connection, actor="system", detail=f"link #{link_id}: {why}",
        )
    return len(ids)


def update_reconnect_by(
    connection: Connection, provider: Provider | None, now: datetime
) -> Deadline:
    """Recompute the connection's reconnect-by date from its stored rows (flushed first)."""
    rows = db.session.scalars(select(Token).where(Token.connection_id == connection.id)).all()
    return apply_reconnect_deadline(connection, provider, rows, now)


def recompute_reconnect_by(now: datetime, batch: int = 500) -> int:
    """Recompute every connection's reconnect-by date (after an upgrade, or a providers file
    that changed a rule), committing per batch; returns how many changed."""
    providers = current_app.extensions["providers"]
    changed, last_id = 0, 0
    while True:
        connections = db.session.scalars(
            select(Connection).where(Connection.id > last_id).order_by(Connection.id)
            .limit(batch).options(selectinload(Connection.tokens))
        ).all()
        if not connections:
            return changed
        for connection in connections:
            provider = providers.get(connection.provider)
            if provider is None:
                # Gone from the providers file (or seeded for a demo): its rules are unknown
                # here, so the date it was given stays rather than being wiped.
                continue
            before = (connection.reconnect_by, connection.reconnect_reason)
            apply_reconnect_deadline(connection, provider, connection.tokens, now)
            changed += before != (connection.reconnect_by, connection.reconnect_reason)
        last_id = connections[-1].id
        db.session.commit()


def _spent_refresh_token(connection: Connection, provider: Provider, now: datetime) -> bool:
    """Whether the stored refresh token can no longer renew anything (kept ones can)."""
    stored = token_vault.token(connection, TokenKind.REFRESH)
    if stored is None:
        return False
    expired = stored.expires_at is not None and stored.expires_at <= now
    return provider.uses_client_credentials or not stored.is_valid or expired


def connect_client_credentials(provider: Provider, user: User) -> tuple[Connection, bool]:
    """Connect a client-credentials provider: the app's own client is the account.

    Asks the token endpoint for a token with the client id and secret (no browser, no
    consent) and records it like any grant; connecting again replaces the token. Raises
    :class:`ConnectError` when the provider refuses or cannot be reached; nothing is stored.
    """
    now = utcnow()
    # The client secret, or (grant_type = "jwt_bearer") an assertion signed with its key.
    grant = JwtBearerGrant() if provider.uses_jwt_bearer else ClientCredentialsGrant()
    try:
        answer = grant.request(provider, Credentials(), now=now)
    except GrantRejected as error:
        reason = redact_known(str(error), [provider.client_secret])
        what = "key" if provider.uses_jwt_bearer else "client id and secret"
        raise ConnectError(
            f"{provider.title} refused the client credentials ({reason}); check the {what} "
            "in the providers file. Nothing was stored."
        ) from None
    except ProviderFailure as error:
        reason = redact_known(str(error), [provider.client_secret])
        raise ConnectError(
            f"{provider.title} could not be asked for a token ({reason}); nothing was stored."
        ) from None
    token: dict[str, Any] = {"access_token": answer.access_token}
    if answer.expires_at is not None:
        token["expires_in"] = round((answer.expires_at - now).total_seconds())
    if answer.scope is not None:
        token["scope"] = answer.scope
    subject = provider.assertion_subject or provider.assertion_issuer or provider.client_id
    account = Account(subject=str(subject), email=None, name=f"{provider.title} client")
    connection, created = record_grant(provider, token, account, user)
    connection.credential_key_id = provider.assertion_key_id
    return connection, created


def missing_scopes(connection: Connection, provider: Provider | None) -> list[str]:
    """Scopes asked for but not granted (shown as a warning), minding provider aliases."""
    granted = set(connection.scopes_granted.split())
    aliases = provider.scope_aliases if provider is not None else {}
    return [
        scope for scope in connection.scopes_requested.split()
        if scope not in granted and aliases.get(scope) not in granted
    ]


def add_credentials(
    provider: Provider,
    label: str,
    values: dict[str, str],
    user: User,
    *,
    expires_at: datetime | None = None,
    connection: Connection | None = None,
) -> Connection:
    """Store pasted API credentials as a new connection, or replace an existing one's.

    For a provider with a key exchange (GreenInvoice) the credentials are exchanged first,
    and the access token it answers is stored with them; credentials the provider refuses
    are not stored at all.
    """
    label = " ".join(label.split())
    if any(unicodedata.category(character) in ("Cc", "Cf") for character in label):
        # Bidi overrides and invisible characters would make the dashboard show one name
        # and mean another.
        raise ConnectError("The account name may not contain control or formatting characters.")
    exchanged = _exchange_credentials(provider, values)
    if connection is None:
        subject = label.lower()
        exists = db.session.scalar(
            select(Connection.id).where(
                Connection.provider == provider.key, Connection.account_subject == subject
            )
        )
        if exists is not None:
            raise ConnectError(f"{provider.title} already has credentials named “{label}”.")
        connection = Connection(provider=provider.key, account_subject=subject, account_name=label,
                                owner_email=default_owner(user))
        db.session.add(connection)
        action = "credentials.added"
    else:
        action = "credentials.replaced"
    connection.status = ConnectionStatus.ACTIVE.value
    connection.created_by_id = connection.created_by_id or user.id
    connection.failure_count = 0
    connection.last_error = None
    connection.next_refresh_at = None
    connection.last_refreshed_at = connection.consented_at = utcnow()
    db.session.flush()
    token_vault.delete(connection)
    for field_name in provider.fields:
        kind = TokenKind(field_name)
        token_vault.store(
            connection, kind, values[field_name],
            expires_at=expires_at if kind is TokenKind.API_KEY else None,
        )
    if exchanged is not None:
        token_vault.store(
            connection, TokenKind.ACCESS, exchanged.access_token, expires_at=exchanged.expires_at
        )
    update_reconnect_by(connection, provider, utcnow())
    audit.record(action, target=f"{provider.key}:{label}", connection=connection, actor=user)
    return connection


def _exchange_credentials(provider: Provider, values: dict[str, str]) -> NewTokens | None:
    """Trade API credentials for an access token where the provider works that way."""
    now = utcnow()
    stored = StoredValues(kinds=frozenset(name for name, value in values.items() if value))
    grant = grant_for(provider.key, provider, ConnectionStatus.ACTIVE.value, stored, now)
    if not grant.renewable:
        return None  # the key is used as it is
    credentials = Credentials(api_key=values.get("api_key"), api_secret=values.get("api_secret"))
    try:
        return grant.request(provider, credentials, now=now)
    except GrantRejected:
        raise ConnectError(
            f"{provider.title} refused these credentials; nothing was stored."
        ) from None
    except (ProviderFailure, NotRefreshable) as error:
        reason = redact_known(str(error), values.values())
        raise ConnectError(
            f"{provider.title} could not be asked for a token ({reason}); nothing was stored."
        ) from None


@dataclass(frozen=True)
class DisconnectResult:
    revoked: bool
    problem: str | None = None


def disconnect(connection: Connection, provider: Provider | None, user: User) -> DisconnectResult:
    """Revoke at the provider when it can (refresh token first), then delete the tokens.

    The tokens are deleted and the connection marked disconnected even when revocation
    fails; the result says so. The connection row and its audit trail stay.
    """
    result = DisconnectResult(revoked=False)
    if provider is not None and provider.is_oauth:
        result = _revoke(connection, provider)
    deleted = token_vault.delete(connection)
    connection.status = ConnectionStatus.DISCONNECTED.value
    connection.next_refresh_at = None
    now = utcnow()
    update_reconnect_by(connection, provider, now)
    void_reconnect_links(connection, now, "the connection was disconnected")
    audit.record(
        "connection.disconnected",
        target=f"{connection.provider}:{connection.account_email or connection.account_subject}",
        connection=connection,
        actor=user,
        outcome="success" if result.problem is None else "partial",
        detail=f"revoked={'yes' if result.revoked else 'no'}; tokens deleted={deleted}"
        + (f"; {result.problem}" if result.problem else ""),
    )
    return result


def _revoke(connection: Connection, provider: Provider) -> DisconnectResult:
    # Refresh token first: revoking it ends the whole grant at most providers.
    values = []
    for kind, hint in ((TokenKind.REFRESH, "refresh_token"), (TokenKind.ACCESS, "access_token")):
        try:
            value = token_vault.get(connection, kind)
        except DecryptionError:
            value = None  # an undecryptable value cannot be revoked
        if value:
            values.append((hint, value))
    revocation = tokens.revoke(provider, values)
    return DisconnectResult(revocation.revoked, revocation.problem)
