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
    if getattr(provider, "flow", None) == "device":  # the registry's device flow (issue 16)
        return CredentialKind.DEVICE
    return CredentialKind.PERSON



def key_age_days(added_at: datetime | None, now: datetime) -> int | None:
    """Whole days since a signing key was stored (None when unknown)."""
    if added_at is None:
        return None
    return max(0, (now - added_at).days)
