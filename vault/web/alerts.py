"""The alerts page (admins): configured channels, their last delivery, recent alerts with
every attempt, and "Send test alert"."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from flask_login import current_user

from vault import audit
from vault.alerts.delivery import deliver_pending, send_test_alert
from vault.extensions import db
from vault.models import utcnow
from vault.queries.alerts import channel_activity, failing_channels, recent_notifications
from vault.web.security import admin_required

bp = Blueprint("alerts", __name__)


@bp.get("/alerts")
@admin_required
def index():
    """Channels (hosts only, never a secret or URL path) and the newest alerts."""
    now = utcnow()
    channels = current_app.extensions["alert_channels"]
    return render_template(
        "alerts/index.html",
        channels=[(channel, channel_activity(channel.name)) for channel in channels],
        failing={f.channel for f in failing_channels(now, [c.name for c in channels])},
        notifications=recent_notifications(),
        now=now,
    )


@bp.post("/alerts/test")
@admin_required
def send_test():
    """Send a test alert to every channel now; what each answered is on the page."""
    channels = current_app.extensions["alert_channels"]
    if not channels:
        flash("No alert channel is configured: set VAULT_SMTP_URL, VAULT_ALERT_WEBHOOK_URL "
              "or VAULT_ALERT_SLACK_WEBHOOK_URL.", "warning")
        return redirect(url_for("alerts.index"))
    now = utcnow()
    notification = send_test_alert(current_user.email, now)
    audit.record("alerts.test_sent", target="alerts", actor=current_user,
                 detail=", ".join(channel.name for channel in channels))
    db.session.commit()
    report = deliver_pending(now, notification_ids=[notification.id])
    if report.failed:
        flash(f"Test alert: {report.delivered} channel(s) accepted it, {report.failed} failed; "
              "see the attempts below. Failed ones are retried by the worker.", "warning")
    else:
        flash(f"Test alert accepted by {report.delivered} channel(s).", "success")
    return redirect(url_for("alerts.index"))
