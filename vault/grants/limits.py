"""Provider limits: the moment a connection stops working unless a person acts.

Every connection has a *reconnect-by* date (or none) with its reason in words, decided here
alone by :func:`reconnect_deadline` from what the provider said (a refresh token's stated
expiry, a pasted key's expiry), the provider's rules (presets in
:mod:`vault.providers.registry`, overridable in the providers file) and the connection's
consent and refresh times. The earliest deadline wins:

=================================  ==========================================================
rule                               deadline
=================================  ==========================================================
refresh token expiry (stated)      its ``expires_at`` (``refresh_token_expires_in``)
``publishing_status = "testing"``  consent + 7 days (Google apps in Testing)
``refresh_token_lifetime_days``    consent + N days
``refresh_token_idle_days``        last refresh (else consent) + N days: each refresh moves it
``client_secret_expires_at``       that day, 00:00 UTC: no OAuth grant works after it
nothing can renew it               the access token's expiry
pasted key expiry                  the API key's ``expires_at``
=================================  ==========================================================

:func:`apply_reconnect_deadline` stores the answer on the connection; the services and the
refresh engine call it whenever tokens are stored, refreshed or refused, so the column is
always current, and the list can sort on it through its index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Protocol

from vault.grants import ClientCredentialsGrant, RefreshTokenGrant, StoredValues, grant_for
from vault.models import Connection, ConnectionStatus, TokenKind
from vault.providers.registry import Provider

__all__ = [
    "GOOGLE_TESTING_DAYS",
    "Deadline",
    "apply_reconnect_deadline",
    "client_secret_expiry",
    "reconnect_deadline",
]

# "... publishing status of 'Testing' is issued a refresh token expiring in 7 days"
# (https://developers.google.com/identity/protocols/oauth2#expiration).
GOOGLE_TESTING_DAYS = 7
STOPPED = "stopped: the provider refused the grant; connect the account again"
RENEWS_ITSELF = "no deadline: renews itself"


class _Times(Protocol):
    """What the rules read of a connection (the ORM object or a plain row)."""

    @property
    def status(self) -> str: ...
    @property
    def consented_at(self) -> datetime | None: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def last_refreshed_at(self) -> datetime | None: ...
    @property
    def reconnect_by(self) -> datetime | None: ...


@dataclass(frozen=True)
class Deadline:
    """When the connection stops working unless a person acts (None: no known moment), and
    why, in words for staff."""

    at: datetime | None
    reason: str | None


def client_secret_expiry(provider: Provider) -> datetime | None:
    """When the app's client secret stops working: the start (UTC) of the day it expires."""
    expires: date | None = provider.client_secret_expires_at
    return None if expires is None else datetime.combine(expires, time(), tzinfo=timezone.utc)


def reconnect_deadline(
    provider_key: str,
    provider: Provider | None,
    connection: _Times,
    stored: StoredValues,
    now: datetime,
) -> Deadline:
    """The earliest moment any rule stops the connection, with its reason."""
    if connection.status == ConnectionStatus.DISCONNECTED.value:
        return Deadline(None, None)
    if connection.status == ConnectionStatus.NEEDS_RECONNECT.value:
        # Already stopped: when it was found out, so "reconnect soonest" lists it first.
        earlier = connection.reconnect_by
        return Deadline(earlier if earlier is not None and earlier <= now else now, STOPPED)
    if provider is None:
        return Deadline(None, f"no known deadline: provider {provider_key} is no longer in the "
                              "providers file")
    grant = grant_for(provider_key, provider, connection.status, stored, now)
    candidates = _oauth_rules(provider, connection, stored, grant) if provider.is_oauth else []
    if stored.api_key_expires_at is not None:
        candidates.append((stored.api_key_expires_at, "the pasted key expires"))
    if candidates:
        at, reason = min(candidates, key=lambda candidate: candidate[0])
        return Deadline(at, reason)
    if grant.renewable:
        return Deadline(None, RENEWS_ITSELF)
    if provider.is_oauth and stored.has(TokenKind.ACCESS):
        # GitHub OAuth Apps, say: a token without an expiry and nothing to renew it with.
        return Deadline(None, "no known deadline: the access token states no expiry")
    if provider.is_oauth:
        return Deadline(None, f"no known deadline, but it cannot be renewed: {grant.reason}")
    return Deadline(None, "no known deadline: the pasted key states no expiry")


def _oauth_rules(provider, connection, stored, grant) -> list[tuple[datetime, str]]:
    found: list[tuple[datetime, str]] = []
    secret = client_secret_expiry(provider)
    if secret is not None and (grant.renewable or isinstance(grant, ClientCredentialsGrant)):
        found.append((secret, f"{provider.title}'s client secret expires: put a new one in the "
                              "providers file"))
    consent = connection.consented_at or connection.created_at
    if isinstance(grant, RefreshTokenGrant):
        if stored.refresh_token_expires_at is not None:
            found.append((stored.refresh_token_expires_at, "the refresh token expires"))
        if provider.publishing_status == "testing" and consent is not None:
            found.append((consent + timedelta(days=GOOGLE_TESTING_DAYS),
                          "Google refresh tokens of apps in Testing end 7 days after consent"))
        days = provider.refresh_token_lifetime_days
        if days and consent is not None:
            found.append((consent + timedelta(days=days),
                          f"{provider.title} refresh tokens end {days} days after consent"))
        idle = provider.refresh_token_idle_days
        last_use = connection.last_refreshed_at or consent
        if idle and last_use is not None:
            found.append((last_use + timedelta(days=idle),
                          f"{provider.title} ends refresh tokens unused for {idle} days: the "
                          "next refresh moves this date"))
    elif not grant.renewable and stored.access_token_expires_at is not None:
        found.append((stored.access_token_expires_at,
                      "the access token expires and nothing can renew it"))
    return found


def apply_reconnect_deadline(
    connection: Connection, provider: Provider | None, rows: Iterable, now: datetime
) -> Deadline:
    """Work the deadline out from the connection's token ``rows`` and store it on it."""
    deadline = reconnect_deadline(
        connection.provider, provider, connection, StoredValues.of(rows), now
    )
    connection.reconnect_by = deadline.at
    connection.reconnect_reason = deadline.reason
    return deadline
