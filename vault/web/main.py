"""Providers overview and the liveness endpoint."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template
from sqlalchemy import text

from vault.extensions import db
from vault.oauth.clients import redirect_uri
from vault.queries.connections import Health, providers_overview

bp = Blueprint("main", __name__)


@bp.get("/")
def index():
    """Each configured provider with its connections counted by health."""
    registry = current_app.extensions["providers"]
    summaries, totals = providers_overview(registry)
    return render_template(
        "main/index.html",
        summaries=summaries,
        totals=totals,
        states=list(Health),
        providers_file=registry.source,
        # What the empty state tells operators to register at the provider.
        example_redirect_uri=redirect_uri("connect.callback", provider_key="google"),
    )


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers and the database responds. Never any secret."""
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
    except Exception:  # noqa: BLE001 - any database failure means "not healthy"
        current_app.logger.warning("healthz: database check failed", exc_info=True)
        database = "unavailable"
    status = 200 if database == "ok" else 503
    return jsonify(status="ok" if status == 200 else "degraded", database=database), status
