"""The providers ``vault seed-demo`` spreads its connections over (vault/cli/demo.py).

The configured ones, or, when none is, the built-in presets plus providers that exercise
the remaining reconnect-by rules (vault/grants/limits.py): a Google app in Testing (7 days
after consent) and a client-credentials partner whose client secret expires.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from vault.providers.registry import CLIENT_CREDENTIALS, PRESETS, Provider

# Used when the providers file names none: the presets, a Google app in Testing, Acme.
BUILT_IN_PROVIDERS = ("google", "microsoft", "voicenter", "greeninvoice", "whatsapp", "github",
                      "slack", "google-testing", "acme")
_BUILT_IN_EXTRAS = {
    "google-testing": {**PRESETS["google"], "title": "Google (app in Testing)",
                       "preset": "google", "publishing_status": "testing"},
    "acme": {"title": "Acme", "type": "oauth2", "grant_type": CLIENT_CREDENTIALS,
             "token_url": "https://auth.acme.example/token", "scope": "partner.read"},
}


@dataclass(frozen=True)
class DemoKind:
    """What a provider's connections hold, read from its configuration or preset."""

    key: str
    title: str
    oauth: bool
    oidc: bool = False
    scope: str = ""
    exchange: bool = False  # API key id + secret exchanged for access tokens (GreenInvoice)
    key_expires: bool = False  # a pasted key with an expiry (WhatsApp)
    provider: Provider | None = None  # whose rules set the reconnect-by dates


def provider_kinds(registry, now: datetime) -> list[DemoKind]:
    """What each provider's demo connections hold."""
    providers = list(registry)
    if not providers:
        providers = [Provider(key=key, **_BUILT_IN_EXTRAS.get(key, PRESETS.get(key, {})))
                     for key in BUILT_IN_PROVIDERS]
        # Acme's secret runs out within the 30 days the pages warn about.
        providers = [
            replace(p, client_secret_expires_at=(now + timedelta(days=20)).date())
            if p.key == "acme" else p for p in providers
        ]
    return [
        DemoKind(
            provider=provider,
            key=provider.key,
            title=provider.title,
            oauth=provider.is_oauth,
            oidc=provider.type == "oidc",
            scope=provider.scope,
            exchange="api_secret" in provider.fields and bool(provider.token_url),
            key_expires=provider.expiry_field,
        )
        for provider in providers
    ]
