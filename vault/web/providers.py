"""The providers overview, the start page: every provider, its connections by health."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from vault.models import utcnow
from vault.oauth.clients import redirect_uri
from vault.queries.connections import Health
from vault.queries.providers import providers_overview, providers_with_client_secrets_expiring

bp = Blueprint("providers", __name__)


@bp.get("/")
def index():
    """Each configured provider with its connections counted by health."""
    registry = current_app.extensions["providers"]
    summaries, totals = providers_overview(registry)
    return render_template(
        "providers/index.html",
        summaries=summaries,
        secret_expiries=providers_with_client_secrets_expiring(utcnow()),
        totals=totals,
        states=list(Health),
        providers_file=registry.source,
        # What the empty state tells operators to register at the provider.
        example_redirect_uri=redirect_uri("connect.callback", provider_key="google"),
    )
