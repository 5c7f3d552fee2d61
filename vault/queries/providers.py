"""The providers overview: every configured provider with its connections counted by health.

The counts come from :func:`vault.queries.connections.health_counts`, the expression every
page shares, so a count here always matches the connections list it links to.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from vault.providers.registry import ProviderRegistry
from vault.queries.connections import health_counts

TYPE_LABELS = {"oidc": "OpenID Connect", "oauth2": "OAuth 2.0", "api_key": "API key"}


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
            + (" client credentials" if provider.uses_client_credentials else ""),
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
        totals.update(summary.counts)
    return summaries, totals
