"""The device authorization grant's pages (RFC 8628): the code to enter, and how it ended.

``connect.start`` hands a provider with ``flow = "device"`` to :func:`start`. The grant's page
shows the user code, the verification URL and a QR code of the complete URL; its script
(``static/js/device.js``) asks ``POST /device-grants/<id>/poll`` every interval, which polls
the provider on the server (vault/services/device_grants.py) and answers the grant's status
as JSON; when the grant has ended the script loads the page again, which then redirects to
the connection or says why not.
"""

from __future__ import annotations

import segno
from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, url_for
from flask_login import current_user
from markupsafe import Markup

from vault import audit
from vault.extensions import db
from vault.models import Connection, DeviceGrant, DeviceGrantStatus, utcnow
from vault.providers.registry import Provider
from vault.services.connections import ConnectError
from vault.services.device_grants import (
    advance_device_grant,
    device_codes,
    start_device_grant,
)
from vault.tokens.store import DecryptionError
from vault.web.security import admin_required

bp = Blueprint("device", __name__)

PENDING = DeviceGrantStatus.PENDING.value
HEADINGS = {
    "denied": "Access was denied",
    "expired": "The code expired",
    "failed": "Connecting failed",
    "approved": "Connected",
    "pending": "Waiting for approval",
}


def start(provider: Provider):
    """Connect for a device-flow provider: ask for a code, then show the grant's page."""
    try:
        grant = start_device_grant(provider, current_user)
        db.session.commit()
    except ConnectError as error:
        db.session.rollback()
        message = f"{error} Nothing was stored."
        audit.record("connection.failed", target=provider.key, outcome="failure",
                     detail=message)
        db.session.commit()
        return render_template("connect/error.html", provider=provider, message=message), 502
    return redirect(url_for("device.grant", grant_id=grant.id), code=303)


def _grant_or_404(grant_id: int) -> DeviceGrant:
    grant = db.session.get(DeviceGrant, grant_id)
    if grant is None:
        abort(404)
    return grant


@bp.get("/device-grants/<int:grant_id>")
@admin_required
def grant(grant_id: int):
    """The code to enter while the grant is pending; the connection once approved; else why
    it ended (denied, expired, failed)."""
    device_grant = _grant_or_404(grant_id)
    provider = current_app.extensions["providers"].get(device_grant.provider)
    title = provider.title if provider is not None else device_grant.provider
    if device_grant.status == DeviceGrantStatus.APPROVED.value and device_grant.connection_id:
        connection = db.session.get(Connection, device_grant.connection_id)
        if connection is not None:
            who = connection.account_email or connection.account_name or \
                connection.account_subject
            flash(f"Connected {who} at {title} with a device code.", "success")
            return redirect(url_for("connections.detail", connection_id=connection.id))
    codes = None
    if device_grant.status == PENDING:
        try:
            codes = device_codes(device_grant)
        except DecryptionError:
            codes = None
    if codes is None:
        status = 200 if device_grant.status == PENDING else 410
        return render_template("device/ended.html", grant=device_grant, title=title,
                               heading=HEADINGS.get(device_grant.status, "Device grant")), status
    target = codes.verification_uri_complete or device_grant.verification_uri
    return render_template(
        "device/grant.html", grant=device_grant, title=title, user_code=codes.user_code,
        qr_svg=_qr_svg(target), has_complete=codes.verification_uri_complete is not None,
        minutes_left=max(0, int((device_grant.expires_at - utcnow()).total_seconds() // 60)),
    )


@bp.post("/device-grants/<int:grant_id>/poll")
@admin_required
def poll(grant_id: int):
    """Poll the provider for this grant now if its interval allows; the status as JSON."""
    _grant_or_404(grant_id)
    status = advance_device_grant(grant_id)
    device_grant = _grant_or_404(grant_id)
    response = jsonify({
        "status": status,
        "interval": device_grant.interval_seconds,
        "message": device_grant.message,
        "location": url_for("device.grant", grant_id=grant_id),
    })
    response.headers["Cache-Control"] = "no-store"
    return response


def _qr_svg(url: str) -> Markup:
    """The URL as an inline SVG QR code (segno: paths only, no script or style)."""
    svg = segno.make(url, error="m", micro=False).svg_inline(
        scale=5, dark="#000", light="#fff", svgclass="device-qr", lineclass=None,
        omitsize=False,
    )
    labelled = svg.replace(
        "<svg ", '<svg role="img" aria-label="QR code of the verification URL" ', 1
    )
    return Markup(labelled)  # noqa: S704 - segno's own markup, the URL is encoded as paths
