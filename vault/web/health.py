"""Token health: what expires soon, what needs a person, what is failing, under which key,
and when a worker last ran; and ``/healthz``, the liveness check for load balancers and
orchestrators."""

from __future__ import annotations

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from sqlalchemy import text

from vault.audit import StaffActor
from vault.extensions import db, limiter
from vault.models import utcnow
from vault.queries.alerts import failing_channels
from vault.queries.connections import EXPIRED_UNRENEWABLE, Health
from vault.queries.counts import health_totals
from vault.queries.health import (
    LATE_AFTER_INTERVALS,
    WorkerStatus,
    expiry_buckets,
    key_id_counts,
    needing_attention,
    worker_status,
)
from vault.queries.providers import providers_with_client_secrets_expiring
from vault.refresh.batch import refresh_due
from vault.tokens.store import token_vault
from vault.web.chart import expiry_chart
from vault.web.security import admin_required, signed_in_user_key

bp = Blueprint("health", __name__)
LISTED = 10  # per section; the section links to the filtered connections list for the rest
BATCH_LIMIT = "3 per minute"
BATCH_WINDOWS = {3600: "1 hour", 6 * 3600: "6 hours", 24 * 3600: "24 hours"}


def _windows() -> dict[int, str]:
    # The refresh buffer first: what `flask vault refresh-due` refreshes when cron runs it.
    buffer = current_app.config["VAULT_REFRESH_BUFFER_SECONDS"]
    amount = f"{buffer // 60} minutes" if buffer % 60 == 0 else f"{buffer} seconds"
    label = f"{amount} (the refresh buffer, as cron runs it)"
    return {buffer: label, **{s: t for s, t in BATCH_WINDOWS.items() if s != buffer}}


@bp.get("/health")
def index():
    """Summary counts, the three lists that need attention, key ids and the expiry chart."""
    now = utcnow()
    totals = health_totals(now)
    cipher = token_vault.cipher
    return render_template(
        "health/index.html",
        now=now,
        totals=totals,
        states=list(Health),
        providers=current_app.extensions["providers"],
        attention=needing_attention(now, LISTED),
        expired_unrenewable=EXPIRED_UNRENEWABLE,
        key_ids=key_id_counts(),
        current_key_id=cipher.current_key_id,
        known_key_ids=set(cipher.key_ids),
        chart=expiry_chart(expiry_buckets(now), now),
        windows=_windows(),
        worker=worker_status(now),
        late_after=LATE_AFTER_INTERVALS,
        failing_channels=failing_channels(
            now, [channel.name for channel in current_app.extensions["alert_channels"]]
        ),
        secret_expiries=providers_with_client_secrets_expiring(now),
    )


@bp.post("/health/refresh-due")
@admin_required
@limiter.limit(BATCH_LIMIT, key_func=signed_in_user_key)
def refresh_expiring():
    """Run the ``flask vault refresh-due`` batch now and flash its summary."""
    windows = _windows()
    within = request.form.get("within", type=int)
    if within not in windows:
        within = current_app.config["VAULT_REFRESH_BUFFER_SECONDS"]
    # The batch's worker threads record the actor in the audit log: a detached StaffActor
    # is safe to share between threads, the request's User row is not.
    summary = refresh_due(within, actor=StaffActor.of(current_user))
    category = "success" if summary.ok else "warning"
    flash(f"Refresh of everything expiring within {windows[within].split(' (')[0]}: "
          f"{summary.line()}", category)
    return redirect(url_for("health.index"))


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers and the database responds. Never any secret.

    The worker is reported, not judged: a late worker leaves the status 200, since
    restarting this web process would not bring it back (docs/architecture.md, "Worker").
    """
    worker = None
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
        worker = _worker_json(worker_status())
    except Exception:  # noqa: BLE001 - any database failure means "not healthy"
        current_app.logger.warning("healthz: database check failed", exc_info=True)
        database = "unavailable"
    status = 200 if database == "ok" else 503
    body = {"status": "ok" if status == 200 else "degraded", "database": database, "worker": worker}
    return jsonify(body), status


def _worker_json(worker: WorkerStatus | None) -> dict:
    if worker is None:
        return {"last_run_at": None, "seconds_ago": None, "ok": False, "late": True, "running": 0}
    return {
        "last_run_at": worker.last_run_at.isoformat(timespec="seconds"),
        "seconds_ago": worker.seconds_ago,
        "ok": worker.ok,
        "late": worker.late,
        "running": worker.running,
    }
