"""Service keys in the dashboard (admins only): list, create, rotate, revoke, expiry.

See docs/architecture.md, "Service keys and users in the dashboard". A new secret (create,
rotate) is rendered once, in the answer to the POST itself: never flashed (flashes live in
the session cookie), never in a URL, never logged or audited.
"""

from __future__ import annotations

import re
from datetime import timedelta

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, SelectMultipleField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from vault.extensions import db
from vault.models import ServiceKey, utcnow
from vault.queries.service_keys import consumers_of, key_state, list_keys
from vault.services import service_keys
from vault.services.service_keys import ServiceKeyError
from vault.web.security import require_admin

bp = Blueprint("service_keys", __name__, url_prefix="/service-keys")
bp.before_request(require_admin)  # every page and action here is an admin's

MAX_DAYS = service_keys.MAX_LIFETIME.days
OVERLAP_CHOICES = [
    (0, "None: the old key stops now"), (1, "1 hour"), (24, "24 hours"), (72, "3 days"),
    (168, "7 days"),
]
_TAG_SEPARATORS = re.compile(r"[,\s]+")


class CreateKeyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    providers = SelectMultipleField("Providers")  # choices: the providers file's
    tags = StringField("Tags", validators=[Optional(), Length(max=400)])
    expires_days = IntegerField(
        "Expires after (days)", validators=[Optional(), NumberRange(1, MAX_DAYS)]
    )


class RotateForm(FlaskForm):
    overlap_hours = SelectField(
        "Old key keeps working for", coerce=int, default=24,
        choices=[SelectChoice(str(hours), label) for hours, label in OVERLAP_CHOICES],
    )


class ExpiryForm(FlaskForm):
    expires_days = IntegerField(
        "Expires after (days from now; empty: never)",
        validators=[Optional(), NumberRange(1, MAX_DAYS)],
    )


class ConfirmForm(FlaskForm):
    """The CSRF token and one button."""


@bp.get("")
def index():
    """Every key with its restrictions, creator, last use, expiry and state; the create form."""
    return _index(_create_form())


@bp.post("")
def create():
    """Create a key and show it, this once, in the answer itself."""
    form = _create_form()
    if not form.validate_on_submit():
        return _index(form, 400)
    expires_in = timedelta(days=form.expires_days.data) if form.expires_days.data else None
    try:
        row, key = service_keys.create_key(
            form.name.data or "", list(form.providers.data or []), _known_providers(),
            tags=_TAG_SEPARATORS.split(form.tags.data or ""), expires_in=expires_in,
            actor=current_user._get_current_object(),
        )
    except ServiceKeyError as error:
        db.session.rollback()
        form.name.errors = [str(error)]
        return _index(form, 400)
    db.session.commit()
    return render_template("service_keys/created.html", row=row, key=key, rotated=False), 201


@bp.get("/<int:key_id>")
def detail(key_id: int):
    """One key: details, the connections it used (with the last fetch), its actions."""
    return _detail(db.get_or_404(ServiceKey, key_id))


@bp.post("/<int:key_id>/rotate")
def rotate(key_id: int):
    """A new secret with the same restrictions; the old one works for the chosen overlap."""
    row = db.get_or_404(ServiceKey, key_id)
    form = RotateForm()
    if not form.validate_on_submit():
        return _detail(row, rotate_form=form, status=400)
    try:
        row, key = service_keys.rotate_key(
            row.name, timedelta(hours=form.overlap_hours.data or 0),
            actor=current_user._get_current_object(),
        )
    except ServiceKeyError as error:
        db.session.rollback()
        abort(409, str(error))
    db.session.commit()
    return render_template("service_keys/created.html", row=row, key=key, rotated=True)


@bp.post("/<int:key_id>/revoke")
def revoke(key_id: int):
    """Revoke a key: both its secrets stop at once."""
    row = db.get_or_404(ServiceKey, key_id)
    _check_csrf(ConfirmForm())
    try:
        service_keys.revoke_key(row.name, actor=current_user._get_current_object())
    except ServiceKeyError as error:
        db.session.rollback()
        abort(409, str(error))
    db.session.commit()
    flash(f"Service key {row.name!r} is revoked; requests with it are refused from now on.",
          "success")
    return redirect(url_for("service_keys.detail", key_id=key_id), 303)


@bp.post("/<int:key_id>/expiry")
def expiry(key_id: int):
    """Set or clear a key's expiry."""
    row = db.get_or_404(ServiceKey, key_id)
    form = ExpiryForm()
    if not form.validate_on_submit():
        return _detail(row, expiry_form=form, status=400)
    days = form.expires_days.data
    try:
        service_keys.set_expiry(row.name, timedelta(days=days) if days else None,
                                actor=current_user._get_current_object())
    except ServiceKeyError as error:
        db.session.rollback()
        abort(409, str(error))
    db.session.commit()
    flash(f"Service key {row.name!r} " + (f"expires in {days} days." if days
                                           else "no longer expires."), "success")
    return redirect(url_for("service_keys.detail", key_id=key_id), 303)


def _index(form: CreateKeyForm, status: int = 200) -> ResponseReturnValue:
    now = utcnow()
    return render_template("service_keys/index.html", rows=list_keys(now), form=form,
                           now=now), status


def _detail(row: ServiceKey, *, rotate_form: RotateForm | None = None,
            expiry_form: ExpiryForm | None = None, status: int = 200) -> ResponseReturnValue:
    now = utcnow()
    return render_template(
        "service_keys/detail.html", row=row, state=key_state(row, now),
        consumers=consumers_of(row.id), rotate_form=rotate_form or RotateForm(),
        expiry_form=expiry_form or ExpiryForm(), confirm_form=ConfirmForm(), now=now,
        overlap_choices=OVERLAP_CHOICES,
    ), status


def _create_form() -> CreateKeyForm:
    form = CreateKeyForm()
    form.providers.choices = [
        (provider.key, provider.title) for provider in current_app.extensions["providers"]
    ]
    return form


def _known_providers() -> set[str]:
    return {provider.key for provider in current_app.extensions["providers"]}


def _check_csrf(form: FlaskForm) -> None:
    if not form.validate_on_submit():
        abort(400, "The form expired; reload the page and try again.")
