"""Home page and the liveness endpoint."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template
from sqlalchemy import text

from vault.extensions import db

bp = Blueprint("main", __name__)


@bp.get("/")
def index():
    """Providers overview (placeholder until the dashboard lands)."""
    providers = list(current_app.extensions["providers"])
    return render_template("main/index.html", providers=providers)


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
