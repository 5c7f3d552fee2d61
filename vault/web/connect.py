"""Connect flows: OAuth 2.0 / OpenID Connect authorization, and pasted API credentials."""

from __future__ import annotations

from datetime import datetime, time, timezone

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client import MismatchingStateError, OAuthError
from flask import (
    Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for,
)
from flask_login import current_user
from flask_wtf import FlaskForm
from joserfc.errors import JoseError as JoseRfcError
from sqlalchemy.exc import IntegrityError
from wtforms import DateField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length, Optional

from vault import audit
from vault.services.connections import (
    ConnectError, account_from_claims, add_credentials, connect_client, missing_scopes,
    record_grant,
)
from vault.extensions import db
from vault.models import Connection, TokenKind
from vault.oauth.clients import oauth_client
from vault.providers.registry import Provider
from vault.tokens.store import token_vault
from vault.web.security import admin_required

bp = Blueprint("connect", __name__)

# Errors from the token exchange and id_token checks that mean "this connect failed".
_EXCHANGE_ERRORS = (AuthlibBaseError, JoseRfcError, ValueError, KeyError)


class ConnectFailed(Exception):
    """Ends a callback on the error page; the message is shown as text."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _provider_or_404(key: str) -> Provider:
    provider = current_app.extensions["providers"].get(key)
    if provider is None:
        abort(404)
    return provider


def _redirect_uri(provider: Provider) -> str:
    base = current_app.config.get("VAULT_BASE_URL")
    path = url_for("connect.callback", provider_key=provider.key)
    return base.rstrip("/") + path if base else url_for(
        "connect.callback", provider_key=provider.key, _external=True
    )


@bp.post("/connect/<provider_key>")
@admin_required
def start(provider_key: str):
    """Send the admin to the provider's consent page (PKCE S256, state, nonce for OIDC)."""
    provider = _provider_or_404(provider_key)
    if not provider.is_oauth:
        return redirect(url_for("connect.add_credentials_form", provider_key=provider.key))
    if provider.uses_client_credentials:
        return _connect_client(provider)
    try:
        return oauth_client(provider.key).authorize_redirect(_redirect_uri(provider))
    except (requests.RequestException, ValueError, RuntimeError) as error:
        current_app.logger.warning("connect %s: cannot start: %s", provider.key, type(error).__name__)
        return _failure_page(provider, f"{provider.title} could not be reached to start the "
                             "connection. Try again in a moment.", 502)


@bp.get("/connect/<provider_key>/callback")
def callback(provider_key: str):
    """Finish the flow: check state, iss and id_token, exchange the code, store the tokens."""
    provider = _provider_or_404(provider_key)
    if not provider.is_oauth or provider.uses_client_credentials:
        abort(404)  # no authorization request was ever sent for these
    client = oauth_client(provider.key)
    try:
        if not (current_user.is_authenticated and current_user.is_admin):
            raise ConnectFailed("Your session has ended. Sign in again, then connect again.", 403)
        issuer = _check_authorization_response(client, provider)
        token = client.authorize_access_token(claims_options={
            # Authlib checks iss only when told to, and aud not at all unless told to.
            "iss": {"essential": True, "value": issuer},
            "aud": {"essential": True, "value": provider.client_id},
        })
        if not token.get("access_token"):
            raise ConnectFailed(f"{provider.title} answered without an access token.")
        account = account_from_claims(_identity_claims(client, provider, token))
    except ConnectFailed as failure:
        _discard_state(client)
        return _failure_page(provider, str(failure), failure.status)
    except MismatchingStateError:
        return _failure_page(provider, "This authorization response does not belong to a "
                             "connect you started here, or it was already used. Start again "
                             "with Connect.")
    except ConnectError as error:
        return _failure_page(provider, str(error))
    except OAuthError as error:
        return _failure_page(provider, f"{provider.title} refused to issue tokens: "
                             f"{_provider_error_text(error.error, error.description)}")
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "an error"
        return _failure_page(provider, f"{provider.title}'s token endpoint answered HTTP "
                             f"{status}. Nothing was stored.", 502)
    except requests.JSONDecodeError:
        return _failure_page(provider, f"{provider.title}'s token endpoint answered with "
                             "something that is not JSON. Nothing was stored.", 502)
    except requests.RequestException as error:
        return _failure_page(provider, f"{provider.title} could not be reached "
                             f"({type(error).__name__}). Nothing was stored.", 502)
    except _EXCHANGE_ERRORS as error:
        current_app.logger.warning("connect %s: exchange failed: %s", provider.key, type(error).__name__)
        return _failure_page(provider, f"{provider.title}'s answer could not be verified "
                             f"({type(error).__name__}). Nothing was stored.")

    try:
        connection, created = record_grant(provider, token, account, current_user)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return _failure_page(provider, "Another connect of the same account finished at the "
                             "same moment; reload the connection list.", 409)
    flash(f"{'Connected' if created else 'Reconnected'} {account.email or account.name or account.subject} "
          f"at {provider.title}.", "success")
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
        connection, created = connect_client(provider, current_user)
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


def _check_authorization_response(client, provider: Provider) -> str | None:
    """Provider errors, a missing code, and the RFC 9207 ``iss`` check, before any exchange.

    Returns the provider's issuer identifier (None for plain OAuth 2.0 without metadata).
    """
    error = request.args.get("error")
    if error:
        raise ConnectFailed(f"{provider.title} did not grant access: "
                            f"{_provider_error_text(error, request.args.get('error_description'))}")
    if not request.args.get("state"):
        raise ConnectFailed("The authorization response carries no state. Start again with Connect.")
    if not request.args.get("code"):
        raise ConnectFailed(f"{provider.title} sent no authorization code. Start again with Connect.")
    try:
        metadata = client.load_server_metadata()
    except requests.RequestException:
        raise ConnectFailed(f"{provider.title} could not be reached.", 502) from None
    issuer = request.args.get("iss")
    # RFC 9207: Authlib does not check this; a mismatch means a mix-up attack or a wrong IdP.
    if metadata.get("authorization_response_iss_parameter_supported") or issuer is not None:
        if issuer != metadata.get("issuer"):
            raise ConnectFailed(f"The response did not come from {provider.title} (issuer "
                                "mismatch). Nothing was stored.")
    return metadata.get("issuer")


def _identity_claims(client, provider: Provider, token: dict) -> dict:
    """Validated id_token claims (OIDC), completed or replaced by the userinfo endpoint."""
    claims = dict(token.get("userinfo") or {})
    asked_openid = "openid" in provider.scope.split()
    if provider.type == "oidc" and asked_openid and not claims:
        raise ConnectFailed(f"{provider.title} sent no id_token, so the account cannot be verified.")
    endpoint = client.load_server_metadata().get("userinfo_endpoint")
    if endpoint and (not claims or not claims.get("email")):
        response = client.get(endpoint, token=token)
        response.raise_for_status()
        info = response.json()
        if claims and str(info.get("sub")) != str(claims.get("sub")):
            raise ConnectFailed("The userinfo answer is about another account than the id_token.")
        claims = {**info, **claims} if claims else info
    return claims


def _provider_error_text(error: str | None, description: str | None) -> str:
    text = error or "unknown error"
    if description:
        text += f" — {description}"
    return text[:300]


def _discard_state(client) -> None:
    state = request.args.get("state")
    if state:
        client.framework.clear_state_data(session, state)


def _failure_page(provider: Provider, message: str, status: int = 400):
    audit.record("connection.failed", target=provider.key, outcome="failure", detail=message)
    db.session.commit()
    return render_template("connect/error.html", provider=provider, message=message), status


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
        setattr(CredentialsForm, name, PasswordField(title, validators=[DataRequired(), Length(max=8192)]))
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
    """Add credentials for an API-key provider."""
    provider = _api_key_provider_or_404(provider_key)
    form = credentials_form(provider, replacing=False)
    if form.validate_on_submit():
        return _save_credentials(provider, form, connection=None)
    return render_template("connect/credentials.html", provider=provider, form=form, connection=None)


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
