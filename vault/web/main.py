"""Providers overview, the liveness endpoint, and the template filters every page uses."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, current_app, jsonify, render_template, url_for
from sqlalchemy import text

from vault.queries.connections import Health, providers_overview
from vault.extensions import db
from vault.oauth.clients import redirect_uri
from vault.models import utcnow

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


@bp.app_template_filter("utc")
def format_utc(moment: datetime | None) -> str:
    """``2025-01-31 14:05 UTC``."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


@bp.app_template_filter("relative")
def format_relative(moment: datetime | None, now: datetime | None = None) -> str:
    """``in 42 min``, ``3 h ago``, ``in 2 days``: rounded down, as people say it."""
    if moment is None:
        return ""
    seconds = (moment - (now or utcnow())).total_seconds()
    size = abs(seconds)
    if size < 60:
        return "in under a minute" if seconds >= 0 else "just now"
    if size < 3600:
        amount = f"{int(size // 60)} min"
    elif size < 48 * 3600:
        amount = f"{int(size // 3600)} h"
    else:
        amount = f"{int(size // 86400)} days"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


@bp.app_template_filter("thousands")
def format_thousands(number: int) -> str:
    """``10,000``."""
    return f"{number:,}"


@bp.app_template_global("health_label")
def health_label(value: str) -> str:
    """The words for a :class:`~vault.queries.connections.Health` value, e.g. ``Needs reconnect``."""
    return Health(value).label
