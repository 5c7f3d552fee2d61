"""Service accounts: a JSON key file uploaded, checked, proven and stored; and key rotation.

The key file is stored as the connection's ``private_key`` value, encrypted by
:class:`~vault.tokens.store.TokenVault` like every other value (with the subject it
impersonates); what may be shown (client e-mail, key id, project) is on the connection's
columns. Nothing is stored unless the provider gave a token for the key: a key Google refuses
is refused here too. Views commit once; these add and flush.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select

from vault import audit
from vault.extensions import db
from vault.grants import Credentials, JwtBearerGrant
from vault.models import Connection, ConnectionStatus, TokenKind, User, utcnow
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.service_accounts import (
    KeyFileError,
    ServiceAccountKey,
    parse_key_file,
    stored_value,
)
from vault.oauth.tokens import NewTokens
from vault.providers.registry import Provider
from vault.redact import redact_known
from vault.services.connections import ConnectError, update_reconnect_by, void_reconnect_links
from vault.services.ownership import default_owner
from vault.tokens.store import token_vault

_AS = " as "  # between the client e-mail and the impersonated user in account_subject
_SUBJECT = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,255}$")


@dataclass(frozen=True)
class Upload:
    """What an admin submitted: the file's bytes, the subject and the scopes picked."""

    data: bytes
    subject: str | None = None
    scopes: tuple[str, ...] = ()


def add_service_account(provider: Provider, upload: Upload, user: User) -> Connection:
    """A new service-account connection from an uploaded key file.

    Raises :class:`ConnectError` (safe to show) for a bad file, subject or scopes, an
    account already connected, or a key the provider refuses; nothing is stored then.
    """
    key = _parse(upload.data)
    subject = _subject(upload.subject)
    scope = _scope(provider, upload.scopes)
    account_subject = key.client_email + (f"{_AS}{subject}" if subject else "")
    if db.session.scalar(select(Connection.id).where(
        Connection.provider == provider.key, Connection.account_subject == account_subject
    )) is not None:
        raise ConnectError(f"{account_subject} is already connected; replace its key on its "
                           "page instead.")
    value = stored_value(key, subject)
    answer = _prove(provider, key, value, scope)
    connection = Connection(
        provider=provider.key, account_subject=account_subject,
        account_email=subject or key.client_email, account_name=key.project_id,
        scopes_requested=scope, created_by_id=user.id, owner_email=default_owner(user),
    )
    db.session.add(connection)
    _store(connection, provider, key, value, answer, scope)
    audit.record("credentials.added", target=f"{provider.key}:{account_subject}",
                 connection=connection, actor=user,
                 detail=f"service account key {key.private_key_id}")
    return connection


def replace_key(connection: Connection, provider: Provider, data: bytes, user: User) -> str:
    """Rotate a service account's key: the new file must be for the same account.

    The subject and scopes stay. Returns the replaced key's id (shown until now).
    """
    key = _parse(data)
    # The account subject is "CLIENT_EMAIL" or "CLIENT_EMAIL as SUBJECT" (add_service_account).
    email, _, subject = connection.account_subject.partition(_AS)
    if key.client_email != email:
        raise ConnectError(f"This connection is for {email}; the file is a key of "
                           f"{key.client_email}. Nothing was stored.")
    value = stored_value(key, subject or None)
    scope = connection.scopes_requested
    answer = _prove(provider, key, value, scope)
    replaced = connection.credential_key_id or "unknown"
    _store(connection, provider, key, value, answer, scope)
    audit.record("credentials.replaced", target=f"{provider.key}:{connection.account_subject}",
                 connection=connection, actor=user,
                 detail=f"service account key {replaced} replaced by {key.private_key_id}")
    return replaced


def _parse(data: bytes) -> ServiceAccountKey:
    try:
        return parse_key_file(data)
    except KeyFileError as error:
        raise ConnectError(f"{error} Nothing was stored.") from None


def _subject(subject: str | None) -> str | None:
    subject = (subject or "").strip()
    if not subject:
        return None
    if not _SUBJECT.match(subject):
        raise ConnectError("The user to impersonate must be an e-mail address (or left empty).")
    return subject.lower()


def _scope(provider: Provider, picked: tuple[str, ...]) -> str:
    allowed = provider.scope.split()
    unknown = [scope for scope in picked if scope not in allowed]
    if unknown:
        raise ConnectError("Pick scopes from the providers file's list only.")
    if not picked:
        raise ConnectError("Pick at least one scope.")
    return " ".join(scope for scope in allowed if scope in picked)  # the file's order


def _prove(provider: Provider, key: ServiceAccountKey, value: str, scope: str) -> NewTokens:
    """A first access token, signed with the new key: the key works, or nothing is stored."""
    credentials = Credentials(private_key=value, scope=scope)
    try:
        return JwtBearerGrant().request(provider, credentials, now=utcnow())
    except GrantRejected as error:
        reason = redact_known(str(error), [key.private_key, value])
        raise ConnectError(f"{provider.title} refused the key ({reason}). Nothing was "
                           "stored.") from None
    except ProviderFailure as error:
        reason = redact_known(str(error), [key.private_key, value])
        raise ConnectError(f"{provider.title} could not be asked for a token ({reason}). "
                           "Nothing was stored.") from None


def _store(
    connection: Connection, provider: Provider, key: ServiceAccountKey, value: str,
    answer: NewTokens, scope: str,
) -> None:
    now = utcnow()
    connection.status = ConnectionStatus.ACTIVE.value
    connection.credential_key_id = key.private_key_id
    connection.scopes_granted = answer.scope or scope
    connection.failure_count = 0
    connection.last_error = None
    connection.next_refresh_at = None
    connection.last_refreshed_at = connection.consented_at = now
    db.session.flush()
    # Deleted, then stored: the row's created_at is the key's age.
    token_vault.delete(connection)
    token_vault.store(connection, TokenKind.PRIVATE_KEY, value)
    token_vault.store(connection, TokenKind.ACCESS, answer.access_token,
                      expires_at=answer.expires_at)
    update_reconnect_by(connection, provider, now)
    void_reconnect_links(connection, now, "the service account's key was replaced")
