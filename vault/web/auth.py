"""Signing in and out, changing one's password, and staff single sign-on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length

from vault import audit
from vault.extensions import db, limiter
from vault.models import User
from vault.services import accounts
from vault.web import sso
from vault.web.security import end_session, safe_next_path, signed_in_user_key, start_session

bp = Blueprint("auth", __name__)

# At most this many failed attempts per account and per client address; successes are free.
FAILED_SIGN_IN_LIMIT = "10 per 15 minutes"
THROTTLED_MESSAGE = (
    "Too many failed sign-in attempts for this account or from this address. "
    "Wait 15 minutes, then try again."
)
THROTTLED_CHANGE_MESSAGE = "Too many wrong current passwords. Wait 15 minutes, then try again."
SIGN_IN_FAILED = "The e-mail address or password is not correct."
SSO_NEXT = "sso_next"  # where to go after the provider sends the browser back


class LoginForm(FlaskForm):
    """E-mail and password."""

    email = StringField(
        "Email",
        validators=[DataRequired(), Length(max=320)],
        render_kw={"autocomplete": "username", "autofocus": True},
    )
    password = PasswordField(
        "Password", validators=[DataRequired()], render_kw={"autocomplete": "current-password"}
    )
    submit = SubmitField("Sign in")


class ChangePasswordForm(FlaskForm):
    """The current password, and the new one twice."""

    current_password = PasswordField(
        "Current password",
        validators=[DataRequired()],
        render_kw={"autocomplete": "current-password"},
    )
    new_password = PasswordField(
        "New password",
        validators=[DataRequired(), Length(min=accounts.MIN_PASSWORD_LENGTH)],
        render_kw={"autocomplete": "new-password"},
    )
    confirm_password = PasswordField(
        "Repeat the new password",
        validators=[
            DataRequired(),
            EqualTo("new_password", message="The two new passwords are not the same."),
        ],
        render_kw={"autocomplete": "new-password"},
    )
    submit = SubmitField("Change password")


def _email_key() -> str:
    # Hashed, so e-mail addresses neither sit in the limiter's storage nor appear in its logs.
    email = accounts.normalize_email(request.form.get("email", ""))
    return "email:" + hashlib.sha256(email.encode()).hexdigest()[:32]


def _address_key() -> str:
    return f"address:{request.remote_addr}"


def _attempt_failed(_response: Response) -> bool:
    return bool(g.get("attempt_failed"))


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    FAILED_SIGN_IN_LIMIT, key_func=_email_key, methods=["POST"],
    deduct_when=_attempt_failed, error_message=THROTTLED_MESSAGE,
)
@limiter.limit(
    FAILED_SIGN_IN_LIMIT, key_func=_address_key, methods=["POST"],
    deduct_when=_attempt_failed, error_message=THROTTLED_MESSAGE,
)
def login():
    """The sign-in form; a successful sign-in starts a new session."""
    next_path = safe_next_path(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(next_path)
    form = LoginForm()
    if form.validate_on_submit():
        try:
            user = accounts.authenticate(form.email.data, form.password.data)
        except accounts.SignInError as error:
            g.attempt_failed = True
            _record_failure(accounts.normalize_email(form.email.data), str(error))
            flash(SIGN_IN_FAILED, "error")
        else:
            _sign_in(user, method="password")
            return redirect(next_path)
    return render_template(
        "auth/login.html",
        form=form,
        sso_providers=sso.staff_providers(),
        next_arg=request.args.get("next"),
    )


@bp.post("/logout")
def logout():
    """Sign out (a POST with a CSRF token, so no other site can sign anyone out).

    Every session of the user ends, not only this browser's: a copied session cookie must
    stop working once its owner has signed out.
    """
    audit.record("auth.sign_out", target=current_user.email)
    accounts.end_every_session(current_user)
    db.session.commit()
    end_session()
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@limiter.limit(
    FAILED_SIGN_IN_LIMIT, key_func=signed_in_user_key, methods=["POST"],
    deduct_when=_attempt_failed, error_message=THROTTLED_CHANGE_MESSAGE,
)
def change_password():
    """Change one's own password; other sessions of the same user end."""
    form = ChangePasswordForm()
    user = current_user._get_current_object()
    if form.validate_on_submit():
        try:
            accounts.change_password(user, form.current_password.data, form.new_password.data)
        except accounts.AccountError as error:
            g.attempt_failed = True
            db.session.rollback()
            audit.record(
                "auth.password_change_failed", target=user.email, outcome="failure",
                detail=str(error),
            )
            db.session.commit()
            flash(str(error), "error")
        else:
            audit.record("auth.password_changed", target=user.email)
            db.session.commit()
            start_session(user)  # the new password's marker: this session stays, others end
            flash("Your password has been changed.", "info")
            return redirect(safe_next_path(request.args.get("next")))
    return render_template(
        "auth/change_password.html",
        form=form,
        forced=user.must_change_password,
        min_length=accounts.MIN_PASSWORD_LENGTH,
    )


@bp.post("/login/sso/<key>")
def sso_start(key: str):
    """Send the browser to a staff sign-in provider (a POST with a CSRF token, like sign-in)."""
    provider = sso.staff_provider(key)
    session[SSO_NEXT] = safe_next_path(request.args.get("next"))
    try:
        return sso.begin(provider)
    except sso.SsoError as error:
        flash(f"Signing in with {provider.title} did not work: {str(error).rstrip('.')}.", "error")
        return redirect(url_for("auth.login"))


@bp.get("/login/sso/<key>/callback")
def sso_callback(key: str):
    """Where the provider sends the browser back: check who it is, then sign them in."""
    provider = sso.staff_provider(key)
    next_path = safe_next_path(session.pop(SSO_NEXT, None))
    claims: Mapping[str, Any] = {}
    try:
        claims = sso.finish(provider)
        user, created = accounts.account_for_sso(
            claims, provider.allowed_domains, provider.auto_create_role
        )
    except (sso.SsoError, accounts.AccountError) as error:
        db.session.rollback()
        tried = accounts.normalize_email(str(claims.get("email") or "")) or None
        _record_failure(tried, f"{provider.key}: {error}")
        flash(f"Signing in with {provider.title} did not work: {str(error).rstrip('.')}.", "error")
        return redirect(url_for("auth.login"))
    if created:
        audit.record(
            "user.created", target=user.email, actor=f"sso:{provider.key}",
            detail=f"role={user.role}",
        )
    _sign_in(user, method=f"sso:{provider.key}")
    return redirect(next_path)


def _sign_in(user: User, method: str) -> None:
    accounts.note_sign_in(user)
    audit.record("auth.sign_in", target=user.email, actor=user, detail=method)
    db.session.commit()
    start_session(user)


def _record_failure(email: str | None, reason: str) -> None:
    # The e-mail tried and why it failed; never what was typed as the password.
    audit.record(
        "auth.sign_in_failed", target=email, actor="anonymous", outcome="failure", detail=reason
    )
    db.session.commit()
