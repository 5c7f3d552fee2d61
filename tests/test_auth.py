"""Signing in and out with local accounts, session lifetime, and changing one's password."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.support.builders import (
    DEFAULT_PASSWORD,
    change_password,
    csrf_token,
    login,
    make_user,
    post_form,
)
from vault.extensions import db
from vault.models import AuditEvent, utcnow
from vault.services import accounts
from vault.web.security import LAST_SEEN_AT, SIGNED_IN_AT


def audit_events(action: str | None = None) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id)
    if action:
        query = query.where(AuditEvent.action == action)
    db.session.expire_all()
    return list(db.session.scalars(query))


def is_signed_in(client) -> bool:
    response = client.get("/")
    return response.status_code == 200


def backdate(client, **seconds_ago: int) -> None:
    """Move the session's clocks back, as if that much time had passed."""
    with client.session_transaction() as session:
        for key, seconds in seconds_ago.items():
            session[key] -= seconds


# -- the form --------------------------------------------------------------------------------


def test_sign_in_page_has_labelled_email_and_password_and_a_sign_in_button(client):
    page = client.get("/login").get_data(as_text=True)
    assert re.search(r'<label for="email">Email</label>', page)
    assert re.search(r'<input[^>]*id="email"[^>]*name="email"[^>]*type="text"', page)
    assert re.search(r'<label for="password">Password</label>', page)
    assert re.search(r'<input[^>]*id="password"[^>]*type="password"', page)
    assert re.search(r'<input[^>]*type="submit"[^>]*value="Sign in"', page)
    assert 'autocomplete="current-password"' in page


def test_signing_in_lands_on_the_start_page_showing_who_and_which_role(client, admin_user):
    response = login(client, "Admin@Example.com ", DEFAULT_PASSWORD)

    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    page = client.get("/").get_data(as_text=True)
    assert "admin@example.com" in page and "admin" in page
    assert 'action="/logout"' in page
    db.session.refresh(admin_user)
    assert admin_user.last_login_at is not None
    [event] = audit_events("auth.sign_in")
    assert (event.actor, event.target, event.outcome) == ("admin@example.com",) * 2 + ("success",)
    assert event.actor_user_id == admin_user.id
    assert event.client_address == "127.0.0.1" and event.detail == "password"
    assert abs(event.occurred_at - utcnow()) < timedelta(minutes=1)  # aware UTC


@pytest.mark.parametrize(
    ("email", "password", "reason"),
    [
        ("viewer@example.com", "Not-The-Password-99", "wrong password"),
        ("nobody@example.com", "Not-The-Password-99", "no such account"),
    ],
)
def test_a_failed_sign_in_says_the_same_whatever_went_wrong(
    client, viewer_user, email, password, reason
):
    response = login(client, email, password)

    assert response.status_code == 200
    assert "The e-mail address or password is not correct." in response.get_data(as_text=True)
    assert not is_signed_in(client)
    [event] = audit_events("auth.sign_in_failed")
    assert (event.actor, event.target, event.outcome, event.detail) == (
        "anonymous", email, "failure", reason,
    )


def test_a_disabled_account_cannot_sign_in_even_with_its_password(client):
    make_user("gone@example.com", enabled=False)

    response = login(client, "gone@example.com")

    assert "The e-mail address or password is not correct." in response.get_data(as_text=True)
    assert not is_signed_in(client)
    assert audit_events("auth.sign_in_failed")[0].detail == "account disabled"


def test_an_account_without_a_password_cannot_sign_in_with_an_empty_one(client):
    make_user("sso-only@example.com", password=None)

    response = client.post(
        "/login",
        data={"email": "sso-only@example.com", "password": "", "csrf_token": csrf_token(client)},
    )

    assert response.status_code == 200
    assert not is_signed_in(client)


def test_no_password_is_ever_written_to_the_audit_log(client, viewer_user):
    login(client, "viewer@example.com", "Wrong-Password-Typed-77")
    login(client, "viewer@example.com", DEFAULT_PASSWORD)

    for event in audit_events():
        row = " ".join(str(value) for value in vars(event).values())
        assert "Wrong-Password-Typed-77" not in row and DEFAULT_PASSWORD not in row


# -- the session -----------------------------------------------------------------------------


def test_signing_in_starts_a_new_session_carrying_nothing_over(app, client, viewer_user):
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
    old_token = csrf_token(client)

    login(client, viewer_user.email)

    with client.session_transaction() as session:
        assert "planted" not in session
        assert session["_user_id"] == str(viewer_user.id)
    assert csrf_token(client, "/") != old_token


def test_the_session_never_holds_a_password_or_its_hash(client, viewer_user):
    login(client, viewer_user.email)

    with client.session_transaction() as session:
        stored = repr(dict(session))
    assert DEFAULT_PASSWORD not in stored and viewer_user.password_hash not in stored


def test_sign_out_is_a_post_with_a_csrf_token(viewer_client):
    assert viewer_client.get("/logout").status_code == 405
    assert viewer_client.post("/logout").status_code == 400
    assert is_signed_in(viewer_client)

    response = post_form(viewer_client, "/logout")

    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert "You have signed out." in viewer_client.get("/login").get_data(as_text=True)
    assert not is_signed_in(viewer_client)
    [event] = audit_events("auth.sign_out")
    assert event.actor == "viewer@example.com"


def test_signing_out_ends_copies_of_the_session_cookie_too(app, viewer_client, viewer_user):
    name = app.config["SESSION_COOKIE_NAME"]
    copy = app.test_client()  # someone who got hold of the cookie
    copy.set_cookie(name, viewer_client.get_cookie(name).value)
    assert is_signed_in(copy)

    post_form(viewer_client, "/logout")

    assert not is_signed_in(copy)
    assert copy.get("/").headers["Location"] == "/login?next=/"
    assert login(viewer_client, viewer_user.email).status_code == 302  # signing in again works
    assert is_signed_in(viewer_client) and not is_signed_in(copy)


def test_until_a_first_sign_out_the_marker_is_the_one_sessions_began_with(viewer_user):
    # So that adding the epoch (migration 0005) signed nobody out.
    before_epochs = hashlib.sha256(viewer_user.password_hash.encode()).hexdigest()[:16]
    assert viewer_user.session_epoch == 0
    assert accounts.session_marker(viewer_user) == before_epochs
    accounts.end_every_session(viewer_user)
    db.session.commit()
    assert viewer_user.session_epoch == 1
    assert accounts.session_marker(viewer_user) != before_epochs


def test_an_idle_session_ends_after_the_idle_timeout(viewer_client):
    backdate(viewer_client, last_seen_at=29 * 60)
    assert is_signed_in(viewer_client)

    backdate(viewer_client, last_seen_at=31 * 60)
    response = viewer_client.get("/")

    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/"
    page = viewer_client.get("/login").get_data(as_text=True)
    assert "Your session has expired. Please sign in again." in page
    assert not is_signed_in(viewer_client)


def test_using_the_session_moves_the_idle_clock_on(viewer_client):
    backdate(viewer_client, last_seen_at=20 * 60)
    assert is_signed_in(viewer_client)

    backdate(viewer_client, last_seen_at=20 * 60)  # 40 minutes since sign-in, 20 since use

    assert is_signed_in(viewer_client)


def test_a_busy_session_still_ends_after_the_absolute_timeout(viewer_client):
    backdate(viewer_client, signed_in_at=8 * 3600 - 60)
    assert is_signed_in(viewer_client)

    backdate(viewer_client, signed_in_at=120)

    assert not is_signed_in(viewer_client)


@pytest.fixture
def short_sessions(app_config):
    app_config.update(VAULT_SESSION_IDLE_MINUTES=5, VAULT_SESSION_MAX_HOURS=1)


def test_the_timeouts_come_from_the_configuration(short_sessions, app, client, viewer_user):
    login(client, viewer_user.email)
    backdate(client, last_seen_at=6 * 60)
    assert not is_signed_in(client)

    login(client, viewer_user.email)
    backdate(client, signed_in_at=3601)
    assert not is_signed_in(client)


def test_a_session_without_its_clocks_is_not_accepted(viewer_client):
    with viewer_client.session_transaction() as session:
        del session[SIGNED_IN_AT], session[LAST_SEEN_AT]

    assert not is_signed_in(viewer_client)


def test_a_disabled_user_is_signed_out_at_the_next_request(viewer_client, viewer_user):
    accounts.set_enabled(viewer_user.email, False)
    db.session.commit()

    response = viewer_client.get("/")

    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert not is_signed_in(viewer_client)


def test_a_role_change_applies_at_the_next_request(viewer_client, viewer_user, admin_user):
    assert "role-viewer" in viewer_client.get("/").get_data(as_text=True)

    accounts.set_role(viewer_user.email, "admin")
    db.session.commit()

    assert "role-admin" in viewer_client.get("/").get_data(as_text=True)


# -- changing the password -------------------------------------------------------------------


@pytest.fixture
def first_admin(app):
    return make_user(
        "first@example.com", role="admin", password="One-Time-Pass-123", must_change_password=True
    )


def test_a_one_time_password_must_be_changed_before_anything_else(client, first_admin):
    response = login(client, first_admin.email, "One-Time-Pass-123", next="/connections")
    assert response.headers["Location"] == "/connections"

    for path in ("/", "/connections", "/audit"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/account/password?next=")
    assert client.get("/healthz").status_code == 200
    page = client.get("/account/password").get_data(as_text=True)
    assert "You signed in with a one-time password." in page
    for label in ("Current password", "New password", "Repeat the new password"):
        assert f">{label}</label>" in page

    response = change_password(
        client, "One-Time-Pass-123", "My-Own-Password-456", query="?next=/connections"
    )

    assert response.status_code == 302 and response.headers["Location"] == "/connections"
    assert is_signed_in(client)
    db.session.refresh(first_admin)
    assert first_admin.must_change_password is False
    assert [e.target for e in audit_events("auth.password_changed")] == ["first@example.com"]


@pytest.mark.parametrize(
    ("current", "new", "repeat", "message"),
    [
        ("Wrong-Current-999", "My-Own-Password-456", None, "The current password is not correct."),
        ("One-Time-Pass-123", "My-Own-Password-456", "Something-Else-456", "are not the same"),
        ("One-Time-Pass-123", "short", None, "at least 12 characters"),
        ("One-Time-Pass-123", "One-Time-Pass-123", None, "different from the current one"),
    ],
)
def test_a_password_change_is_refused_when_it_does_not_add_up(
    client, first_admin, current, new, repeat, message
):
    login(client, first_admin.email, "One-Time-Pass-123")

    response = change_password(client, current, new, repeat)

    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    db.session.refresh(first_admin)
    assert first_admin.must_change_password is True
    assert accounts.check_password(first_admin, "One-Time-Pass-123")


def test_a_wrong_current_password_is_audited_as_a_failure(viewer_client):
    change_password(viewer_client, "Wrong-Current-999", "My-Own-Password-456")

    [event] = audit_events("auth.password_change_failed")
    assert (event.actor, event.outcome) == ("viewer@example.com", "failure")


def test_a_new_password_ends_every_other_session_of_that_user(app, viewer_user):
    laptop, phone = app.test_client(), app.test_client()
    login(laptop, viewer_user.email)
    login(phone, viewer_user.email)

    change_password(laptop, DEFAULT_PASSWORD, "Brand-New-Password-1")

    assert is_signed_in(laptop)
    assert not is_signed_in(phone)
    assert login(phone, viewer_user.email, DEFAULT_PASSWORD).status_code == 200
    assert login(phone, viewer_user.email, "Brand-New-Password-1").status_code == 302


# -- where sign-in leads ---------------------------------------------------------------------


def test_a_page_asked_for_before_signing_in_is_where_signing_in_leads(client, viewer_user):
    response = client.get("/connections?status=error&page=2")
    assert response.status_code == 302
    login_url = response.headers["Location"]
    assert login_url == "/login?next=/connections?status%3Derror%26page%3D2"

    page = client.get(login_url).get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)"', page).group(1)
    response = client.post(
        action.replace("&amp;", "&"),
        data={"email": viewer_user.email, "password": DEFAULT_PASSWORD,
              "csrf_token": csrf_token(client, login_url)},
    )

    assert response.headers["Location"] == "/connections?status=error&page=2"


@pytest.mark.parametrize(
    "raw_next",
    [
        "https://evil.example",
        "//evil.example",
        "/\\evil.example",
        "%2F%2Fevil.example",
        "javascript:alert(1)",
        "https:evil.example",
        "/%09/evil.example",
        "%252F%252Fevil.example",
        "///evil.example",
        "",
    ],
)
def test_next_only_ever_leads_to_a_local_path(client, viewer_user, raw_next):
    # The query string is sent exactly as written (percent-escapes included).
    response = client.post(
        f"/login?next={raw_next}",
        data={"email": viewer_user.email, "password": DEFAULT_PASSWORD,
              "csrf_token": csrf_token(client)},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/"

    assert client.get(f"/login?next={raw_next}").headers["Location"] == "/"
