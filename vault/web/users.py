"""Staff accounts in the dashboard (admins only): list, create, change role, disable, enable.

See docs/architecture.md, "Service keys and users in the dashboard". The rules are
``vault.services.accounts``' (the same as ``flask users ...``): the last enabled admin cannot
be demoted or disabled, and disabling ends every session of the user for good. A one-time
password is rendered once, in the answer to the POST that made it.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import EmailField, RadioField, SelectField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from vault import audit
from vault.extensions import db
from vault.models import Role, User
from vault.queries.users import list_staff
from vault.services import accounts
from vault.web.security import require_admin

bp = Blueprint("users", __name__, url_prefix="/users")
bp.before_request(require_admin)  # every page and action here is an admin's

ROLE_CHOICES = [(Role.VIEWER.value, "viewer"), (Role.ADMIN.value, "admin")]
SIGN_IN_CHOICES = [
    ("password", "A one-time password, shown once, to be changed at the first sign-in"),
    ("sso", "Sign in with SSO only"),
]


def _choices(pairs: list[tuple[str, str]]) -> list[SelectChoice]:
    return [SelectChoice(value, label) for value, label in pairs]


class CreateUserForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=320)])
    role = SelectField("Role", choices=_choices(ROLE_CHOICES), default=Role.VIEWER.value)
    sign_in = RadioField("Signs in with", choices=_choices(SIGN_IN_CHOICES), default="password")


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=_choices(ROLE_CHOICES))


class ConfirmForm(FlaskForm):
    """The CSRF token and one button."""


@bp.get("")
def index():
    """Staff with role, last sign-in and status; the form that adds one."""
    return _index(CreateUserForm())


@bp.post("")
def create():
    """Add a staff account; its one-time password (if any) is shown in this answer only."""
    form = CreateUserForm()
    if not form.validate_on_submit():
        return _index(form, 400)
    password = accounts.generate_password() if form.sign_in.data == "password" else None
    try:
        user = accounts.create_user(form.email.data or "", form.role.data or "", password,
                                    must_change_password=password is not None)
    except accounts.AccountError as error:
        db.session.rollback()
        form.email.errors = [str(error)]
        return _index(form, 400)
    how = "one-time password" if password else "SSO only"
    audit.record("user.created", target=user.email, detail=f"role={user.role}; {how}")
    db.session.commit()
    return render_template("users/created.html", user=user, password=password), 201


@bp.post("/<int:user_id>/role")
def set_role(user_id: int):
    """Make a user an admin or a viewer (from their next request on)."""
    user = db.get_or_404(User, user_id)
    form = RoleForm()
    if not form.validate_on_submit():
        abort(400, "Choose admin or viewer.")
    try:
        user, previous = accounts.set_role(user.email, form.role.data or "")
    except accounts.AccountError as error:
        db.session.rollback()
        flash(str(error), "error")
        return redirect(url_for("users.index"), 303)
    if previous != user.role:
        audit.record("user.role_changed", target=user.email, detail=f"{previous} -> {user.role}")
        db.session.commit()
        flash(f"{user.email} is now {user.role} (was {previous}).", "success")
    return redirect(url_for("users.index"), 303)


@bp.post("/<int:user_id>/disable")
def disable(user_id: int):
    """Disable a user and end their sessions; then on to what they own, to hand it over."""
    user = db.get_or_404(User, user_id)
    if not _set_enabled(user, enabled=False):
        return redirect(url_for("users.index"), 303)
    return redirect(url_for("people.show", email=user.email), 303)


@bp.post("/<int:user_id>/enable")
def enable(user_id: int):
    """Enable a disabled user again (their old sessions stay ended)."""
    _set_enabled(db.get_or_404(User, user_id), enabled=True)
    return redirect(url_for("users.index"), 303)


def _set_enabled(user: User, *, enabled: bool) -> bool:
    if not ConfirmForm().validate_on_submit():
        abort(400, "The form expired; reload the page and try again.")
    state = "enabled" if enabled else "disabled"
    try:
        user, was_enabled = accounts.set_enabled(user.email, enabled)
    except accounts.AccountError as error:
        db.session.rollback()
        flash(str(error), "error")
        return False
    if was_enabled != enabled:
        audit.record(f"user.{state}", target=user.email)
        db.session.commit()
    flash(f"{user.email} is {state}." + (" Their sessions have ended; hand over what they own."
                                          if not enabled else ""), "success")
    return True


def _index(form: CreateUserForm, status: int = 200) -> ResponseReturnValue:
    return render_template(
        "users/index.html", rows=list_staff(), form=form, role_choices=ROLE_CHOICES,
        sign_in_choices=SIGN_IN_CHOICES,
    ), status
