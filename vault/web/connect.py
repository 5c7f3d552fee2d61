"""Connect flows: OAuth 2.0 / OpenID Connect authorization, and pasted API credentials."""

from __future__ import annotations

from datetime import datetime, time, timezone

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import DateField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length, Optional

from vault import audit
from vault.extensions import db
from vault.models import Connection, TokenKind
from vault.oauth import identity
from vault.oauth.clients import ProviderClient, connect_client, redirect_uri
from vault.providers.registry import SERVICE_ACCOUNT, Provider
from vault.services import throttle
from vault.services.connections import (
    ConnectError,
    account_from_claims,
    add_credentials,
    connect_client_credentials,
    missing_scopes,
    record_grant,
)
from vault.tokens.store import token_vault
from vault.web import device, reconnect
from vault.web.security import admin_required

bp = Blueprint("connect", __name__)

SESSION_ENDED = "Your session has ended. Sign in again, then connect again."
TOO_MANY_CALLBACKS = (
    "Too many answers without a signed-in administrator came from this address. Wait a few "
    "minutes, sign in, then connect again."
)


def _provider_or_404(key: str) -> Provider:
    provider = current_app.extensions["providers"].get(key)
    if provider is None:
        abort(404)
    return provider


@bp.post("/connect/<provider_key>")
@admin_required
def start(provider_key: str):
    """Send the admin to the provider's consent page (PKCE S256, state, nonce for OIDC)."""
    provider = _provider_or_404(provider_key)
    if provider.type == SERVICE_ACCOUNT:
        return redirect(url_for("service_accounts.add", provider_key=provider.key))
    if not provider.is_oauth:
        return redirect(url_for("connect.add_credentials_form", provider_key=provider.key))
    if provider.uses_client_credentials:
        return _connect_client(provider)
    if provider.uses_device_flow:
        return device.start(provider)  # a code to enter at the provider (RFC 8628)
    callback_uri = redirect_uri("connect.callback", provider_key=provider.key)
    try:
        return identity.start(connect_client(provider), callback_uri)
    except identity.IdentityError as error:
        return _failure_page(provider, f"{error} Nothing was stored.", error.status)


@bp.get("/connect/<provider_key>/callback")
def callback(provider_key: str):
    """Finish the flow: check the answer and the account, then store the tokens."""
    provider = _provider_or_404(provider_key)
    if not provider.is_oauth or provider.uses_client_credentials or provider.uses_device_flow:
        abort(404)  # no authorization request was ever sent for these
    client = connect_client(provider)
    link_id = reconnect.link_of_flow(client)
    if link_id is not None:
        # Started from a reconnect or connect link: the link, not a session, authorises it.
        return reconnect.finish_flow(provider, client, link_id)
    if not (current_user.is_authenticated and current_user.is_admin):
        return _callback_without_admin(provider, client)
    try:
        authorization = identity.complete(client)
        account = account_from_claims(authorization.claims)
    except identity.IdentityError as error:
        return _failure_page(provider, f"{error} Nothing was stored.", error.status)
    except ConnectError as error:
        return _failure_page(provider, str(error))
    token = authorization.token
    try:
        connection, created = record_grant(provider, token, account, current_user)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return _failure_page(provider, "Another connect of the same account finished at the "
                             "same moment; reload the connection list.", 409)
    who = account.email or account.name or account.subject
    flash(f"{'Connected' if created else 'Reconnected'} {who} at {provider.title}.", "success")
    if provider.offline_access and token_vault.token(connection, TokenKind.REFRESH) is None:
        flash("No refresh token — reconnect with consent, or this connection will stop "
              "working when its access token expires.", "warning")
    missing = missing_scopes(connection, provider)
    if missing:
        flash(f"{provider.title} granted fewer scopes than asked; missing: {' '.join(missing)}.",
              "warning")
    return redirect(url_for("connections.detail", connection_id=connection.id))


def _connect_client(provider: Provider):
    """Client credentials: no consent page, the token is fetched and stored right away."""
    try:
        connection, created = connect_client_credentials(provider, current_user)
        db.session.commit()
    except ConnectError as error:
        db.session.rollback()
        return _failure_page(provider, str(error), 502)
    except IntegrityError:
        db.session.rollback()
        return _failure_page(provider, "Another connect of the same client finished at the "
                             "same moment; reload the connection list.", 409)
    flash(f"{'Connected' if created else 'Reconnected'} {provider.title} with the app's client "
          "credentials.", "success")
    return redirect(url_for("connections.detail", connection_id=connection.id))


def _failure_page(provider: Provider, message: str, status: int = 400):
    audit.record("connection.failed", target=provider.key, outcome="failure", detail=message)
    db.session.commit()
    return render_template("connect/error.html", provider=provider, message=message), status


def _callback_without_admin(provider: Provider, client: ProviderClient):
    """A callback reaching a browser without an admin session: an ended session, or noise.

    Anyone can request this URL, so it is throttled per client address in the database and
    recorded once per address and window, not once per request.
    """
    address = request.remote_addr or "unknown"
    reservation = throttle.reserve((throttle.ANONYMOUS_CALLBACKS_PER_ADDRESS, address))
    if not reservation.granted:
        response = make_response(render_template(
            "connect/error.html", provider=provider, message=TOO_MANY_CALLBACKS), 429)
        response.headers["Retry-After"] = str(reservation.retry_after)
        return response
    identity.discard_state(client)
    if reservation.first:
        minutes = int(throttle.ANONYMOUS_CALLBACKS_PER_ADDRESS.window.total_seconds() // 60)
        audit.record(
            "connection.failed", target=provider.key, outcome="failure",
            actor=None if current_user.is_authenticated else "anonymous",
            detail=f"{SESSION_ENDED} Further callbacks from this address without an admin "
            f"session are not recorded for {minutes} minutes.",
        )
        db.session.commit()
    return render_template("connect/error.html", provider=provider, message=SESSION_ENDED), 403


# -- API-key providers ---------------------------------------------------------------------


def credentials_form(provider: Provider, *, replacing: bool) -> FlaskForm:
    """A form with the provider preset's fields (values never rendered back)."""

    class CredentialsForm(FlaskForm):
        pass

    if not replacing:
        CredentialsForm.label = StringField(
            "Account name", validators=[DataRequired(), Length(max=100)],
            description="How staff will recognise these credentials, e.g. “Main account”.",
        )
    for name, title in provider.fields.items():
        field = PasswordField(title, validators=[DataRequired(), Length(max=8192)])
        setattr(CredentialsForm, name, field)
    if provider.expiry_field:
        CredentialsForm.expires_on = DateField("Expires on (optional)", validators=[Optional()])
    CredentialsForm.submit = SubmitField("Replace credentials" if replacing else "Save credentials")
    return CredentialsForm()


def _api_key_provider_or_404(key: str) -> Provider:
    provider = _provider_or_404(key)
    if provider.type != "api_key":
        abort(404)
    return provider


@bp.route("/connect/<provider_key>/credentials", methods=["GET", "POST"])
@admin_required
def add_credentials_form(provider_key: str):
    """Add credentials for an API-key provider (a service account's are a key file)."""
    if _provider_or_404(provider_key).type == SERVICE_ACCOUNT:
        return redirect(url_for("service_accounts.add", provider_key=provider_key))
    provider = _api_key_provider_or_404(provider_key)
    form = credentials_form(provider, replacing=False)
    if form.validate_on_submit():
        return _save_credentials(provider, form, connection=None)
    return render_template(
        "connect/credentials.html", provider=provider, form=form, connection=None
    )


@bp.route("/connections/<int:connection_id>/credentials", methods=["GET", "POST"])
@admin_required
def replace_credentials_form(connection_id: int):
    """Replace the credentials of an API-key connection."""
    connection = db.get_or_404(Connection, connection_id)
    provider = _api_key_provider_or_404(connection.provider)
    form = credentials_form(provider, replacing=True)
    if form.validate_on_submit():
        return _save_credentials(provider, form, connection=connection)
    return render_template(
        "connect/credentials.html", provider=provider, form=form, connection=connection
    )


def _save_credentials(provider: Provider, form: FlaskForm, connection: Connection | None):
    values = {name: getattr(form, name).data.strip() for name in provider.fields}
    expires_on = getattr(form, "expires_on", None)
    expires_at = (
        datetime.combine(expires_on.data, time.min, tzinfo=timezone.utc)
        if expires_on is not None and expires_on.data else None
    )
    label = form.label.data if connection is None else connection.account_name or ""
    try:
        saved = add_credentials(
            provider, label, values, current_user, expires_at=expires_at, connection=connection
        )
        db.session.commit()
    except ConnectError as error:
        db.session.rollback()
        flash(str(error), "error")
        return render_template(
            "connect/credentials.html", provider=provider, form=form, connection=connection
        ), 400
    flash(f"Credentials for {provider.title} saved.", "success")
    return redirect(url_for("connections.detail", connection_id=saved.id))
