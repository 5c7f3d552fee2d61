"""Sign-in throttling: at most 10 failed attempts per account and per client address in 15
minutes; successful sign-ins cost nothing."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.support.builders import DEFAULT_PASSWORD, change_password, csrf_token, login
from vault.extensions import db
from vault.models import AuditEvent

WRONG = "Wrong-Password-000"
MESSAGE = "Too many failed sign-in attempts for this account or from this address."


def attempt(app, email: str, password: str = WRONG, address: str = "127.0.0.1"):
    """One sign-in attempt from a fresh browser at ``address``."""
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = address
    return login(browser, email, password)


def failed_attempts_recorded() -> int:
    db.session.expire_all()
    return db.session.scalar(
        select(func.count()).where(AuditEvent.action == "auth.sign_in_failed")
    )


def test_an_account_is_locked_for_15_minutes_after_10_failures_from_anywhere(app, viewer_user):
    for n in range(10):
        assert attempt(app, viewer_user.email, address=f"10.0.0.{n}").status_code == 200

    response = attempt(app, viewer_user.email, DEFAULT_PASSWORD, address="10.0.1.1")

    assert response.status_code == 429
    assert MESSAGE in response.get_data(as_text=True)
    assert 0 < int(response.headers["Retry-After"]) <= 15 * 60 + 1
    assert failed_attempts_recorded() == 10  # the refused attempt never reached the password
    assert attempt(app, "other@example.com", address="10.0.1.1").status_code == 200


def test_an_address_is_locked_after_10_failures_whichever_accounts_it_tried(app, viewer_user):
    for n in range(10):
        assert attempt(app, f"guess{n}@example.com").status_code == 200

    assert attempt(app, viewer_user.email, DEFAULT_PASSWORD).status_code == 429
    assert attempt(app, viewer_user.email, DEFAULT_PASSWORD, address="10.9.9.9").status_code == 302


def test_successful_sign_ins_do_not_count(app, viewer_user):
    # Runs after tests that used up this account's and this address's attempts: counters
    # never carry over from one test (one app) to the next.
    for _ in range(12):
        assert attempt(app, viewer_user.email, DEFAULT_PASSWORD).status_code == 302
    for _ in range(9):
        attempt(app, viewer_user.email)

    assert attempt(app, viewer_user.email, DEFAULT_PASSWORD).status_code == 302


def test_a_form_sent_without_its_fields_is_not_a_failed_attempt(app, client, viewer_user):
    for _ in range(12):
        response = client.post("/login", data={"csrf_token": csrf_token(client)})
        assert response.status_code == 200

    assert attempt(app, viewer_user.email, DEFAULT_PASSWORD).status_code == 302


def test_the_email_is_throttled_however_it_is_written(app, viewer_user):
    for n in range(10):
        attempt(app, f"  Viewer@EXAMPLE.com{' ' * n}", address=f"10.0.0.{n}")

    assert attempt(app, "viewer@example.com", DEFAULT_PASSWORD, "10.0.2.2").status_code == 429


def test_showing_the_sign_in_page_is_never_throttled(app, client, viewer_user):
    for _ in range(10):
        attempt(app, viewer_user.email)

    assert client.get("/login").status_code == 200


def test_guessing_the_current_password_on_the_change_form_is_throttled_too(viewer_client):
    for _ in range(10):
        assert change_password(viewer_client, WRONG, "New-Password-123").status_code == 200

    response = change_password(viewer_client, DEFAULT_PASSWORD, "New-Password-123")
    assert response.status_code == 429
    assert "Too many wrong current passwords." in response.get_data(as_text=True)

