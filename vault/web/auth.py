"""Signing in and out, changing one's password, and staff single sign-on."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length

from vault import audit
from vault.extensions import db
from vault.models import User
from vault.services import accounts, throttle
from vault.web import sso
from vault.web.security import end_session, safe_next_path, start_session

bp = Blueprint("auth", __name__)

# The allowances are vault.services.throttle's (10 failures per account, per client address,
# per device and per user in 15 minutes); successes are given back, so they cost nothing.
THROTTLED_MESSAGE = "Too many failed sign-in attempts for this account or from this address."
THROTTLED_CHANGE_MESSAGE = "Too many wrong current passwords."
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


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The sign-in form; a successful sign-in starts a new session."""
    next_path = safe_next_path(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(next_path)
    form = LoginForm()
    if form.validate_on_submit():
        email = accounts.normalize_email(form.email.data)
        device_cookie = request.cookies.get(_device_cookie_name())
        # Reserved (and committed) before the password is checked, so a burst of guesses on
        # any number of workers and instances gets no more Argon2 checks than the allowance.
        reservation = throttle.reserve_sign_in(email, request.remote_addr, device_cookie)
        if not reservation.granted:
            return _throttled(THROTTLED_MESSAGE, reservation, lambda: _login_page(form))
        try:
            user = accounts.authenticate(email, form.password.data)
        except accounts.SignInError as error:
            _record_failure(email, str(error))
            flash(SIGN_IN_FAILED, "error")
        else:
            throttle.release(reservation)
            _sign_in(user, method="password")
            response = redirect(next_path)
            _remember_device(response, user.email, device_cookie)
            return response
    return _login_page(form)


def _login_page(form: LoginForm) -> str:
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
def change_password():
    """Change one's own password; other sessions of the same user end."""
    form = ChangePasswordForm()
    user = current_user._get_current_object()
    if form.validate_on_submit():
        user_id = user.id
        # The throttle's transaction takes a connection of its own: hand the session's back
        # first, so a burst never holds two pooled connections a request.
        db.session.commit()
        # Per user, reserved before the current password is checked, like signing in.
        reservation = throttle.reserve((throttle.PASSWORD_CHANGE_PER_USER, str(user_id)))
        if not reservation.granted:
            return _throttled(
                THROTTLED_CHANGE_MESSAGE, reservation, lambda: _change_password_page(form, user)
            )
        try:
            accounts.change_password(user, form.current_password.data, form.new_password.data)
        except accounts.AccountError as error:
            db.session.rollback()
            audit.record(
                "auth.password_change_failed", target=user.email, outcome="failure",
                detail=str(error),
            )
            db.session.commit()
            flash(str(error), "error")
        else:
            throttle.release(reservation)
            audit.record("auth.password_changed", target=user.email)
            db.session.commit()
            start_session(user)  # the new password's marker: this session stays, others end
            flash("Your password has been changed.", "info")
            return redirect(safe_next_path(request.args.get("next")))
    return _change_password_page(form, user)


def _change_password_page(form: ChangePasswordForm, user: User) -> str:
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
    # The e-mail tried and why it failed; never what was typed as the password. Something
    # that is no e-mail address (bidi overrides, controls) is not put in the target column:
    # the reason already quotes it with those characters escaped.
    try:
        target = accounts.checked_email(email) if email else None
    except accounts.AccountError:
        target = None
    audit.record(
        "auth.sign_in_failed", target=target, actor="anonymous", outcome="failure", detail=reason
    )
    db.session.commit()


def _throttled(
    message: str, reservation: throttle.Reservation, page: Callable[[], str]
) -> Response:
    """The form ``page`` renders, answered 429 with ``Retry-After``; no password was checked."""
    minutes = math.ceil(reservation.retry_after / 60)
    flash(f"{message} Wait {minutes} minute{'s' if minutes != 1 else ''}, then try again.",
          "error")
    response = make_response(page(), 429)
    response.headers["Retry-After"] = str(reservation.retry_after)
    return response


def _device_cookie_name() -> str:
    # __Host- (Secure, Path=/, no Domain) like the session cookie, so no other host under the
    # same domain can plant or shadow it; without Secure browsers refuse that prefix.
    return ("__Host-" if current_app.config["SESSION_COOKIE_SECURE"] else "") + "device"


def _remember_device(response: Response, email: str, current: str | None) -> None:
    """Give this browser the account's device cookie (see vault.services.throttle)."""
    response.set_cookie(
        _device_cookie_name(),
        throttle.device_cookie_for(email, current),
        max_age=int(throttle.DEVICE_COOKIE_LIFETIME.total_seconds()),
        path="/",
        secure=current_app.config["SESSION_COOKIE_SECURE"],
        httponly=True,
        samesite="Lax",
    )
