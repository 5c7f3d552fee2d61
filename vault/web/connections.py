"""Connections: list, detail (masked values), manual refresh, disconnect."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import EmailField, StringField, SubmitField

from vault.crypto import DecryptionError
from vault.extensions import db, limiter
from vault.grants import StoredValues, due_at, grant_for
from vault.grants.kinds import describe
from vault.models import Connection, ConnectionStatus, TokenKind, utcnow
from vault.queries.audit import connection_history
from vault.queries.connection_list import SORTS, ConnectionFilters, list_connections
from vault.queries.connections import Health, tags_by_connection
from vault.queries.people import consumers_of
from vault.refresh.engine import Outcome, RefreshResult, refresh_now
from vault.services import ownership, reconnect_links
from vault.services.checks import CheckResult, check_connection, how_checked
from vault.services.connections import disconnect, missing_scopes
from vault.tokens.store import token_vault
from vault.web.security import admin_required, signed_in_user_key

bp = Blueprint("connections", __name__, url_prefix="/connections")
REFRESH_LIMIT = "10 per minute"
CHECK_LIMIT = "10 per minute"


class ConfirmForm(FlaskForm):
    """A bare POST form: the CSRF token and one button."""

    submit = SubmitField("Disconnect")


class DetailsForm(FlaskForm):
    """Owner, purpose and tags (checked by :mod:`vault.services.ownership`)."""

    owner = EmailField("Owner",
                       description="Who answers for it: a staff member's or anyone's e-mail.")
    purpose = StringField("Purpose", description="What it is for, in a sentence.")
    tags = StringField("Tags", description="A few short labels, separated by commas or spaces "
                                   "(a-z, 0-9, - and _).")
    submit = SubmitField("Save details")


def mask(value: str) -> str:
    """Only the last 4 characters, and none of a value too short to spare them."""
    return "••••" + value[-4:] if len(value) >= 12 else "••••"


@bp.get("")
def index():
    """Connections filtered by provider, health and account; soonest expiry first; 50 a page."""
    filters = ConnectionFilters.from_args(request.args)
    now = utcnow()
    providers = current_app.extensions["providers"]
    provider_choices = [(provider.key, provider.title) for provider in providers]
    if filters.provider and filters.provider not in providers:
        provider_choices.append((filters.provider, f"{filters.provider} (not configured)"))
    page = list_connections(filters, now)
    return render_template(
        "connections/index.html",
        page=page,
        tags=tags_by_connection([row.id for row in page.items]),
        filters=filters,
        now=now,
        providers=providers,
        provider_choices=provider_choices,
        status_choices=[(state.value, state.label) for state in Health],
        sorts=SORTS,
        next_refresh=_next_refresh,
    )


def _next_refresh(row) -> datetime | None:
    # refresh-due picks a token up this long before it expires
    buffer = timedelta(seconds=current_app.config["VAULT_REFRESH_BUFFER_SECONDS"])
    return due_at(row.renewable, row.expires_at, row.next_refresh_at, buffer)


@bp.get("/<int:connection_id>")
def detail(connection_id: int):
    """One connection: its tokens masked, scopes, who connected it, its audit history."""
    return _detail_page(db.get_or_404(Connection, connection_id))


def _detail_page(connection: Connection, details: DetailsForm | None = None, status: int = 200):
    """The connection's page; ``details`` is the owner form as posted (with its errors)."""
    provider = current_app.extensions["providers"].get(connection.provider)
    order = list(TokenKind)
    tokens = []
    for token in sorted(connection.tokens, key=lambda t: order.index(TokenKind(t.kind))):
        try:
            shown = mask(token_vault.decrypt(token))
        except DecryptionError:
            shown = None  # the page says "undecryptable" and renders the rest
        if token.kind == TokenKind.PRIVATE_KEY.value and shown is not None:
            shown = "key file"  # shown by its key id, never by any of its characters
        tokens.append((token, shown))
    key_row = next((t for t in connection.tokens if t.kind == TokenKind.PRIVATE_KEY.value), None)
    kinds = {token.kind for token in connection.tokens}
    missing = missing_scopes(connection, provider)
    requested = connection.scopes_requested.split()
    return render_template(
        "connections/detail.html",
        connection=connection,
        provider=provider,
        tokens=tokens,
        scopes=[(scope, scope not in missing) for scope in requested],
        extra_scopes=[s for s in connection.scopes_granted.split() if s not in requested],
        missing_scopes=missing,
        has_refresh_token=TokenKind.REFRESH.value in kinds,
        grant=grant_for(
            connection.provider, provider, connection.status,
            StoredValues.of(connection.tokens), utcnow(),
        ),
        history=connection_history(connection.id),
        form=ConfirmForm(),
        link_rows=[(link, reconnect_links.state_of(link, utcnow()))
                   for link in reconnect_links.links_of_connection(connection)],
        can_link=reconnect_links.can_issue(connection),
        checked_by=how_checked(provider, connection),
        tags=ownership.current_tags(connection),
        consumers=consumers_of([connection.id]).get(connection.id, []),
        details_form=details or DetailsForm(
            owner=connection.owner_email, purpose=connection.purpose,
            tags=" ".join(ownership.current_tags(connection)),
        ),
        credential=describe(provider, connection.credential_key_id,
                            key_row.created_at if key_row is not None else None),
        now=utcnow(),
    ), status


@bp.post("/<int:connection_id>/refresh")
@admin_required
@limiter.limit(REFRESH_LIMIT, key_func=signed_in_user_key)
def refresh(connection_id: int):
    """Refresh now, even a fresh token, and say on the detail page how it went."""
    connection = db.get_or_404(Connection, connection_id)
    if connection.status == ConnectionStatus.DISCONNECTED.value:
        flash("This connection is disconnected: there is nothing to refresh. Connect the "
              "account again to use it.", "info")
    else:
        result = refresh_now(connection, current_user._get_current_object())
        flash(*_refresh_message(result))
    return redirect(url_for("connections.detail", connection_id=connection_id))


def _refresh_message(result: RefreshResult) -> tuple[str, str]:
    """The flash message and category for one manual refresh."""
    if result.outcome is Outcome.REFRESHED:
        return "Refreshed: a new access token is stored.", "success"
    if result.outcome is Outcome.ALREADY_FRESH:
        return "Already refreshed a moment ago by another worker; its token is used.", "success"
    if result.outcome is Outcome.SKIPPED:
        return "A refresh of this connection is running right now; reload in a moment.", "info"
    reason = result.message.rstrip(".")
    if result.outcome is Outcome.NEEDS_RECONNECT:
        return f"Needs reconnect: the provider refused the grant ({reason}).", "error"
    if result.outcome is Outcome.FAILED:
        retry = f" Next try after {result.retry_at:%Y-%m-%d %H:%M} UTC." if result.retry_at else ""
        kept = " The current token is still valid." if result.usable else ""
        return f"The provider is unavailable: {reason}.{kept}{retry}", "warning"
    # Outcome.UNAVAILABLE: nothing to refresh with (API keys used as they are), or busy.
    return f"Nothing was refreshed: {reason}.", "info"


@bp.post("/<int:connection_id>/check")
@admin_required
@limiter.limit(CHECK_LIMIT, key_func=signed_in_user_key)
def check(connection_id: int):
    """Check the stored credential now (a read-only request) and say how it went."""
    connection = db.get_or_404(Connection, connection_id)
    outcome = check_connection(connection, actor=current_user._get_current_object(),
                               now=utcnow())
    db.session.commit()
    category = {CheckResult.OK: "success", CheckResult.REJECTED: "error",
                CheckResult.FAILED: "warning"}.get(outcome.result, "info")
    words = {CheckResult.OK: "Check passed", CheckResult.REJECTED: "Check refused: needs "
             "reconnect", CheckResult.FAILED: "Check failed, will retry",
             CheckResult.SKIPPED: "Not checked", CheckResult.UNSUPPORTED: "Cannot be checked"}
    flash(f"{words[outcome.result]}: {outcome.message.rstrip('.')}.", category)
    return redirect(url_for("connections.detail", connection_id=connection_id))


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


@bp.post("/<int:connection_id>/details")
@admin_required
def update_details(connection_id: int):
    """Save owner, purpose and tags; a bad value changes nothing and is shown by its field."""
    connection = db.get_or_404(Connection, connection_id)
    form = DetailsForm()
    if not form.validate_on_submit():
        return _detail_page(connection, form, 400)
    try:
        changed = ownership.update_details(
            connection, owner=form.owner.data, purpose=form.purpose.data,
            tags=ownership.split_tags(form.tags.data), actor=current_user._get_current_object(),
        )
    except ownership.OwnershipError as error:
        db.session.rollback()
        getattr(form, error.field).errors = [str(error)]
        return _detail_page(db.get_or_404(Connection, connection_id), form, 400)
    db.session.commit()
    flash(f"Saved: {', '.join(changed)}." if changed else "Nothing changed.", "success")
    return redirect(url_for("connections.detail", connection_id=connection_id))
