"""Token health: what expires soon, what needs a person, what is failing, and under which key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from vault.audit import StaffActor
from vault.queries.connections import EXPIRED_UNRENEWABLE, Health, health_totals
from vault.extensions import limiter
from vault.models import utcnow
from vault.refresh.batch import refresh_due
from vault.tokens.store import token_vault
from vault.queries.health import Bucket, expiry_buckets, key_id_counts, needing_attention
from vault.web.security import admin_required

bp = Blueprint("health", __name__, url_prefix="/health")
LISTED = 10  # per section; the section links to the filtered connections list for the rest
BATCH_LIMIT = "3 per minute"
BATCH_WINDOWS = {3600: "1 hour", 6 * 3600: "6 hours", 24 * 3600: "24 hours"}


def _user_key() -> str:
    return f"user:{current_user.id}"


def _windows() -> dict[int, str]:
    # The refresh buffer first: what `flask vault refresh-due` refreshes when cron runs it.
    buffer = current_app.config["VAULT_REFRESH_BUFFER_SECONDS"]
    amount = f"{buffer // 60} minutes" if buffer % 60 == 0 else f"{buffer} seconds"
    label = f"{amount} (the refresh buffer, as cron runs it)"
    return {buffer: label, **{s: t for s, t in BATCH_WINDOWS.items() if s != buffer}}


@bp.get("")
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
    )


@bp.post("/refresh-due")
@admin_required
@limiter.limit(BATCH_LIMIT, key_func=_user_key)
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


# -- the expiry chart: server-rendered SVG, geometry worked out here ------------------------

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 240, 48, 8, 16, 52


@dataclass(frozen=True)
class Bar:
    """One bucket's bar, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    bucket: Bucket


def expiry_chart(buckets: list[Bucket], now: datetime) -> dict:
    """Bars, y-axis ticks, day labels and the "now" line for ``health/_chart.html``."""
    top = _nice_ceiling(max((bucket.count for bucket in buckets), default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(1, len(buckets))
    baseline = TOP + plot_height
    bars = []
    for index, bucket in enumerate(buckets):
        height = plot_height * bucket.count / top
        bars.append(Bar(LEFT + index * slot + slot * 0.1, baseline - height, slot * 0.8, height,
                        bucket))
    days: dict[str, dict] = {}
    for bar in bars:
        start = bar.bucket.start
        day = days.setdefault(f"{start:%a} {start.day} {start:%b}", {"xs": [], "total": 0})
        day["xs"].append(bar.x + bar.width / 2)
        day["total"] += bar.bucket.count
    span = (buckets[-1].end - buckets[0].start) if buckets else timedelta(days=1)
    coming = [bucket for bucket in buckets if not bucket.past]
    busiest = max(coming, key=lambda bucket: bucket.count, default=None)
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "baseline": baseline,
        "bars": bars,
        "ticks": [
            (value, baseline - plot_height * value / top)
            for value in ((0, top) if top == 1 else (0, top // 2, top))
        ],
        "days": [
            (sum(day["xs"]) / len(day["xs"]), label, day["total"]) for label, day in days.items()
        ],
        "now_x": LEFT + plot_width * ((now - buckets[0].start) / span) if buckets else LEFT,
        "total": sum(bucket.count for bucket in coming),
        "busiest": busiest if busiest is not None and busiest.count else None,
    }


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 4, 6, 8, 10, 20, ... at least ``value``: its half is whole."""
    magnitude = 1
    while True:
        for step in (1, 2, 4, 6, 8):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10
