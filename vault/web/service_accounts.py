"""Service accounts: upload a JSON key file, and replace it (key rotation)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import SelectMultipleField, StringField, SubmitField
from wtforms.validators import Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from vault.extensions import db
from vault.models import Connection
from vault.providers.registry import SERVICE_ACCOUNT, Provider
from vault.services.connections import ConnectError
from vault.services.service_accounts import Upload, add_service_account, replace_key
from vault.web.security import admin_required

bp = Blueprint("service_accounts", __name__)
# One read more than the key file may have: enough to tell an oversize file.
_READ_LIMIT = 64 * 1024


class KeyFileForm(FlaskForm):
    """The key file alone (replacing a key keeps the subject and scopes)."""

    key_file = FileField("JSON key file", validators=[FileRequired("Choose the key file.")],
                         description="The JSON key Google Cloud created for the service account.")
    submit = SubmitField("Replace key")


class ServiceAccountForm(KeyFileForm):
    """A new service account: its key file, the scopes it gets and whom it acts as."""

    scopes = SelectMultipleField(
        "Scopes", choices=[], option_widget=CheckboxInput(), widget=ListWidget(prefix_label=False)
    )
    subject = StringField(
        "User to impersonate (optional)", validators=[Optional(), Length(max=320)],
        description="Domain-wide delegation: the e-mail of the Workspace user the service "
        "account acts as. Leave empty to act as the service account itself.",
    )
    submit = SubmitField("Save service account")


def _service_account_provider_or_404(key: str) -> Provider:
    provider = current_app.extensions["providers"].get(key)
    if provider is None or provider.type != SERVICE_ACCOUNT:
        abort(404)
    return provider


def _uploaded(form: KeyFileForm) -> bytes:
    return form.key_file.data.stream.read(_READ_LIMIT + 1)


@bp.route("/connect/<provider_key>/service-account", methods=["GET", "POST"])
@admin_required
def add(provider_key: str):
    """Upload a service account's key file; its first token proves it before it is stored."""
    provider = _service_account_provider_or_404(provider_key)
    form = ServiceAccountForm()
    form.scopes.choices = [(scope, scope) for scope in provider.scope.split()]
    if not form.is_submitted():
        form.scopes.data = provider.scope.split()
    if form.validate_on_submit():
        upload = Upload(_uploaded(form), form.subject.data, tuple(form.scopes.data or ()))
        try:
            connection = add_service_account(provider, upload, current_user)
            db.session.commit()
        except ConnectError as error:
            db.session.rollback()
            flash(str(error), "error")
        else:
            flash(f"Service account {connection.account_subject} saved.", "success")
            return redirect(url_for("connections.detail", connection_id=connection.id))
    status = 400 if form.is_submitted() else 200
    return render_template("service_accounts/upload.html", provider=provider, form=form,
                           connection=None), status


@bp.route("/connections/<int:connection_id>/service-account-key", methods=["GET", "POST"])
@admin_required
def replace(connection_id: int):
    """Replace a service account's key file: a key rotation."""
    connection = db.get_or_404(Connection, connection_id)
    provider = _service_account_provider_or_404(connection.provider)
    form = KeyFileForm()
    if form.validate_on_submit():
        try:
            replaced = replace_key(connection, provider, _uploaded(form), current_user)
            db.session.commit()
        except ConnectError as error:
            db.session.rollback()
            flash(str(error), "error")
        else:
            flash(f"Key {replaced} replaced by {connection.credential_key_id}.", "success")
            return redirect(url_for("connections.detail", connection_id=connection.id))
    status = 400 if form.is_submitted() else 200
    return render_template("service_accounts/upload.html", provider=provider, form=form,
                           connection=connection), status
