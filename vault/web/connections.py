"""Connections: list, detail (masked values), disconnect."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import SubmitField

from vault.connections import disconnect, missing_scopes
from vault.crypto import DecryptionError
from vault.extensions import db
from vault.models import Connection, Token, TokenKind
from vault.store import token_vault
from vault.web.security import admin_required

bp = Blueprint("connections", __name__, url_prefix="/connections")
PAGE_SIZE = 50


class ConfirmForm(FlaskForm):
    """A bare POST form: the CSRF token and one button."""

    submit = SubmitField("Disconnect")


def mask(value: str) -> str:
    """Only the last 4 characters, and none of a value too short to spare them."""
    return "••••" + value[-4:] if len(value) >= 12 else "••••"


@bp.get("")
def index():
    """Every connection, soonest access-token expiry first."""
    access = Token.__table__.alias("access")
    statement = (
        select(Connection, access.c.expires_at)
        .outerjoin(access, (access.c.connection_id == Connection.id) & (access.c.kind == "access"))
        .order_by(access.c.expires_at.is_(None), access.c.expires_at, Connection.id)
    )
    rows = db.session.execute(statement.limit(PAGE_SIZE)).all()
    providers = current_app.extensions["providers"]
    return render_template("connections/index.html", rows=rows, providers=providers)


@bp.get("/<int:connection_id>")
def detail(connection_id: int):
    """One connection: its tokens masked, scopes, who connected it."""
    connection = db.get_or_404(Connection, connection_id)
    provider = current_app.extensions["providers"].get(connection.provider)
    tokens = []
    for token in sorted(connection.tokens, key=lambda t: list(TokenKind).index(TokenKind(t.kind))):
        try:
            shown = mask(token_vault.decrypt(token))
        except DecryptionError:
            shown = None
        tokens.append((token, shown))
    return render_template(
        "connections/detail.html",
        connection=connection,
        provider=provider,
        tokens=tokens,
        missing_scopes=missing_scopes(connection, provider),
        has_refresh_token=any(t.kind == TokenKind.REFRESH.value for t in connection.tokens),
        form=ConfirmForm(),
    )


@bp.route("/<int:connection_id>/disconnect", methods=["GET", "POST"])
@admin_required
def disconnect_connection(connection_id: int):
    """Confirm, then revoke at the provider when it can and delete the tokens."""
    connection = db.get_or_404(Connection, connection_id)
    provider = current_app.extensions["providers"].get(connection.provider)
    form = ConfirmForm()
    if not form.validate_on_submit():
        return render_template(
            "connections/disconnect.html", connection=connection, provider=provider, form=form
        )
    result = disconnect(connection, provider, current_user)
    db.session.commit()
    if result.problem:
        flash(f"Disconnected and tokens deleted here, but {result.problem}. Revoke the "
              "access at the provider by hand.", "warning")
    elif result.revoked:
        flash("Disconnected: access revoked at the provider and tokens deleted.", "success")
    else:
        flash("Disconnected: tokens deleted (this provider offers no revocation).", "success")
    return redirect(url_for("connections.detail", connection_id=connection.id))
