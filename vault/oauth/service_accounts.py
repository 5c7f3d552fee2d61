"""Google service-account key files: checked on upload, and the assertion they sign.

A key file is the JSON Google Cloud hands out for a service account ("Create and delete
service account keys"): ``type`` ``service_account``, ``project_id``, ``private_key_id``,
``private_key`` (PEM), ``client_email``, ``client_id``, ``token_uri``. The vault stores it,
with the subject it impersonates, as one encrypted value (:func:`stored_value`); everything
here but the private key may be shown.
https://cloud.google.com/iam/docs/keys-create-delete
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from vault.oauth.assertions import Assertion
from vault.oauth.errors import GrantRejected
from vault.oauth.tokens import NewTokens, jwt_bearer_grant
from vault.providers.registry import Provider
from vault.providers.signing_keys import UnusableKey, signing_algorithm

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# A real key file is about 2.3 KB; a few times that is plenty.
MAX_KEY_FILE_BYTES = 16 * 1024
_EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,255}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9:.-]{0,127}$")


class KeyFileError(ValueError):
    """The uploaded file is not a usable service-account key; the message never quotes it."""


@dataclass(frozen=True)
class ServiceAccountKey:
    """A checked key file; only :attr:`private_key` is secret."""

    client_email: str
    private_key_id: str
    project_id: str | None
    token_uri: str
    private_key: str = field(repr=False)
    client_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The key file's fields the vault keeps (in Google's names)."""
        return {
            "type": "service_account", "project_id": self.project_id,
            "private_key_id": self.private_key_id, "private_key": self.private_key,
            "client_email": self.client_email, "client_id": self.client_id,
            "token_uri": self.token_uri,
        }


def parse_key_file(data: bytes) -> ServiceAccountKey:
    """Check an uploaded key file: size, JSON, ``type``, e-mail, key id, PEM key, token URI.

    Raises :class:`KeyFileError` saying what is wrong, never what the file contains.
    """
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"The file is larger than {MAX_KEY_FILE_BYTES // 1024} KB; a "
                           "service account's JSON key is about 2 KB.")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeError, ValueError):
        raise KeyFileError("The file is not JSON; upload the JSON key file Google Cloud "
                           "created for the service account.") from None
    if not isinstance(document, dict):
        raise KeyFileError("The file is not a JSON object; upload a service account's key file.")
    if document.get("type") != "service_account":
        raise KeyFileError('The file\'s "type" is not "service_account"; upload a service '
                           "account's key file (not an OAuth client or a user's credentials).")
    email = _text(document, "client_email")
    if not _EMAIL.match(email):
        raise KeyFileError('The file\'s "client_email" is not an e-mail address.')
    key_id = _text(document, "private_key_id")
    if not _KEY_ID.match(key_id):
        raise KeyFileError('The file\'s "private_key_id" is not a key id.')
    project = document.get("project_id")
    if project is not None and not (isinstance(project, str) and _PROJECT.match(project)):
        raise KeyFileError('The file\'s "project_id" is not a project id.')
    _text(document, "private_key")
    private_key = document["private_key"]  # as Google wrote it, final newline and all
    try:
        signing_algorithm(private_key)
    except UnusableKey as error:
        raise KeyFileError(f'The file\'s "private_key" {error}.') from None
    token_uri = document.get("token_uri") or GOOGLE_TOKEN_URI
    parts = urlsplit(token_uri) if isinstance(token_uri, str) else None
    if parts is None or parts.scheme != "https" or not parts.netloc:
        raise KeyFileError('The file\'s "token_uri" is not an https URL.')
    client_id = document.get("client_id")
    return ServiceAccountKey(
        client_email=email, private_key_id=key_id, project_id=project, token_uri=token_uri,
        private_key=private_key, client_id=str(client_id)[:64] if client_id else None,
    )


def _text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value.strip():
        raise KeyFileError(f'The file has no "{name}"; upload a service account\'s key file.')
    return value.strip()


def stored_value(key: ServiceAccountKey, subject: str | None) -> str:
    """The one value the vault encrypts for a service-account connection."""
    return json.dumps({"key_file": key.as_json(), "subject": subject})


def from_stored_value(value: str) -> tuple[ServiceAccountKey, str | None]:
    """The key and subject back from :func:`stored_value`'s text."""
    try:
        document = json.loads(value)
        key = parse_key_file(json.dumps(document["key_file"]).encode())
        subject = document.get("subject")
    except (ValueError, KeyError, TypeError):
        raise GrantRejected("the stored key file cannot be read; upload the key again") from None
    return key, subject if isinstance(subject, str) and subject else None


def service_account_token(
    provider: Provider, stored: str, scope: str, *, now: datetime
) -> NewTokens:
    """An access token for a stored service account: a new assertion, signed with its key.

    Google's claims: ``iss`` the client e-mail, ``sub`` the impersonated user (domain-wide
    delegation) when set, ``aud`` the key file's ``token_uri``, ``scope`` space-separated,
    ``iat`` and ``exp`` at most an hour apart; ``kid`` is the key's id.
    https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests
    """
    key, subject = from_stored_value(stored)
    assertion = Assertion(
        private_key=key.private_key, issuer=key.client_email, audience=key.token_uri,
        subject=subject, key_id=key.private_key_id, scope=scope, scope_in_claims=True,
    )
    return jwt_bearer_grant(provider, assertion, now=now, client_auth=False)


def provider_assertion_token(provider: Provider, *, now: datetime) -> NewTokens:
    """An access token for an ``oauth2`` provider with ``grant_type = "jwt_bearer"``: the
    providers file's key, issuer (default: the client id), subject and audience (default:
    the token URL)."""
    assert provider.assertion_private_key is not None  # checked at start-up
    issuer = provider.assertion_issuer or provider.client_id or ""
    assertion = Assertion(
        private_key=provider.assertion_private_key, issuer=issuer,
        audience=provider.assertion_audience or provider.token_url or "",
        subject=provider.assertion_subject, key_id=provider.assertion_key_id,
        scope=provider.scope or None,
    )
    client_auth = bool(provider.client_secret or provider.client_private_key)
    return jwt_bearer_grant(provider, assertion, now=now, client_auth=client_auth)
