"""The providers overview: every configured provider with its connections counted by health.

The counts come from :func:`vault.queries.counts.health_counts`, the expression every
page shares, so a count here always matches the connections list it links to.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app

from vault.grants.limits import client_secret_expiry
from vault.providers.registry import ProviderRegistry
from vault.queries.counts import add_counts, health_counts

TYPE_LABELS = {
    "oidc": "OpenID Connect", "oauth2": "OAuth 2.0", "api_key": "API key",
    "service_account": "Service account (JSON key file)",
}


@dataclass
class ProviderSummary:
    """One provider row of the overview: its connections counted by health."""

    key: str
    title: str
    type_label: str
    configured: bool
    is_oauth: bool = False
    counts: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """All of this provider's connections."""
        return sum(self.counts.values())


def providers_overview(
    registry: ProviderRegistry, now: datetime | None = None
) -> tuple[list[ProviderSummary], Counter]:
    """Every configured provider (file order), then any provider key only the data knows.

    Returns the summaries and the totals over all providers.
    """
    counts = health_counts(now)
    summaries = [
        ProviderSummary(
            key=provider.key,
            title=provider.title,
            type_label=TYPE_LABELS.get(provider.type, provider.type)
            + (" client credentials" if provider.grant_type == "client_credentials" else "")
            + (" JWT bearer" if provider.grant_type == "jwt_bearer" else ""),
            configured=True,
            is_oauth=provider.is_oauth,
            counts=counts.get(provider.key, Counter()),
        )
        for provider in registry
    ]
    for key in sorted(set(counts) - {provider.key for provider in registry}):
        summaries.append(
            ProviderSummary(key, key, "not in the providers file", False, counts=counts[key])
        )
    totals: Counter = Counter()
    for summary in summaries:
        add_counts(totals, summary.counts)
    return summaries, totals


# From when the pages warn about the app's own client secret expiring.
SECRET_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class SecretExpiry:
    """A provider whose client secret (in the providers file) expires soon or has expired."""

    key: str
    title: str
    expires_at: datetime
    days: int  # whole days left (negative: days since it expired)

    @property
    def message(self) -> str:
        """E.g. "Acme's client secret expires in 20 days" or "... expired 3 days ago"."""
        subject = f"{self.title}'s client secret"
        if self.days > 1:
            return f"{subject} expires in {self.days} days"
        if self.days == 1:
            return f"{subject} expires tomorrow"
        if self.days == 0:
            return f"{subject} expires today"
        ago = -self.days
        return f"{subject} expired {ago} day{'' if ago == 1 else 's'} ago"

    @property
    def expired(self) -> bool:
        """Whether the secret no longer works."""
        return self.days < 0


def providers_with_client_secrets_expiring(
    now: datetime, within: timedelta = SECRET_WARNING, registry: ProviderRegistry | None = None
) -> list[SecretExpiry]:
    """Providers whose ``client_secret_expires_at`` falls before ``now + within`` (expired
    ones included), soonest first; for the pages and the ``provider.client_secret_expiring``
    alert."""
    registry = current_app.extensions["providers"] if registry is None else registry
    found = []
    for provider in registry:
        expires = client_secret_expiry(provider)
        if expires is not None and expires <= now + within:
            days = (expires.date() - now.date()).days
            found.append(SecretExpiry(provider.key, provider.title, expires, days))
    return sorted(found, key=lambda expiry: expiry.expires_at)
