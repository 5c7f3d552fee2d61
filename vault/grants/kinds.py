"""The credential kind of a connection: one decision, for pages and the token API alike.

=====================  =================================================================
kind                   when
=====================  =================================================================
person                 an OAuth provider a person consents to (authorization code)
client_credentials     ``grant_type = "client_credentials"``: the app's own client secret
service_account        a private key signs assertions (JWT bearer grant): a
                       ``service_account`` provider or ``grant_type = "jwt_bearer"``
device                 ``flow = "device"``: a person approves on another device (RFC 8628)
api_key                pasted credentials
unknown                the provider left the providers file
=====================  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from vault.providers.registry import Provider


class CredentialKind(str, Enum):
    """What kind of credential a connection is, as pages and the token API name it."""

    PERSON = "person"  # a person consented (authorization code)
    CLIENT_CREDENTIALS = "client_credentials"  # the app's own client secret
    SERVICE_ACCOUNT = "service_account"  # a private key signs assertions (JWT bearer grant)
    DEVICE = "device"  # a person approved on another device (device authorization grant)
    API_KEY = "api_key"  # pasted credentials
    UNKNOWN = "unknown"  # its provider left the providers file


CREDENTIAL_KIND_LABELS = {
    CredentialKind.PERSON: "Person",
    CredentialKind.CLIENT_CREDENTIALS: "Client credentials",
    CredentialKind.SERVICE_ACCOUNT: "Service account",
    CredentialKind.DEVICE: "Device",
    CredentialKind.API_KEY: "API key",
    CredentialKind.UNKNOWN: "Unknown",
}


def credential_kind(provider: Provider | None) -> CredentialKind:
    """The one decision of a connection's credential kind, from its provider's settings."""
    if provider is None:
        return CredentialKind.UNKNOWN
    if provider.uses_jwt_bearer:
        return CredentialKind.SERVICE_ACCOUNT
    if provider.uses_client_credentials:
        return CredentialKind.CLIENT_CREDENTIALS
    if provider.type == "api_key":
        return CredentialKind.API_KEY
    if provider.uses_device_flow:
        return CredentialKind.DEVICE
    return CredentialKind.PERSON


@dataclass(frozen=True)
class Credential:
    """A connection's credential kind and, for a key-based one, its key's id and age."""

    kind: CredentialKind
    key_id: str | None = None
    key_added_at: datetime | None = None

    @property
    def label(self) -> str:
        """The kind in words for pages."""
        return CREDENTIAL_KIND_LABELS[self.kind]

    def key_age_days(self, now: datetime) -> int | None:
        """Whole days since the key was stored (None when unknown)."""
        if self.key_added_at is None:
            return None
        return max(0, (now - self.key_added_at).days)


def describe(
    provider: Provider | None, key_id: str | None, key_added_at: datetime | None
) -> Credential:
    """The credential of a connection: its kind and, when a key signs for it, the key's id
    (``connections.credential_key_id``) and when it was stored (its ``private_key`` row)."""
    kind = credential_kind(provider)
    if kind is not CredentialKind.SERVICE_ACCOUNT:
        return Credential(kind)
    return Credential(kind, key_id, key_added_at)
