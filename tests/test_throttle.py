"""Throttling in the database (vault/services/throttle.py): exact under parallel bursts, and
device cookies that keep an account's owner signed in while others guess at it.

The multi-process proof (gunicorn workers and a second instance) is test_throttle_gunicorn.py;
the allowances' basic behaviour (10 per account, per address, successes free) is
test_auth_throttle.py.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.support.builders import DEFAULT_PASSWORD, csrf_token, login, make_user, post_form
from tests.support.refresh_fixtures import both_backends
from vault.extensions import db
from vault.models import AuditEvent, ThrottleCounter, utcnow
from vault.services import accounts, throttle

pytestmark = [both_backends, pytest.mark.shared_postgres_database]

WRONG = "Wrong-Password-000"
BURST = 40
ALLOWANCE = 10
DEVICE_COOKIE = "__Host-device"


@pytest.fixture
def password_checks(monkeypatch) -> list[str]:
    """Every Argon2 check (the password tried, in order); each takes a little while, as a real
    one does, so that parallel attempts really overlap."""
    checked: list[str] = []
    lock = threading.Lock()
    real = accounts.check_password

    def slow_check(user, password):
        with lock:
            checked.append(password)
        time.sleep(0.05)
        return real(user, password)

    monkeypatch.setattr(accounts, "check_password", slow_check)
    return checked


def browser(app, address: str = "127.0.0.1"):
    """A fresh browser at ``address``."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def attempt(app, email: str, password: str = WRONG, address: str = "127.0.0.1"):
    """One sign-in from a fresh browser at ``address``."""
    return login(browser(app, address), email, password)


def in_parallel(requests: list) -> list:
    """Send every prepared request at the same moment, each in a thread of its own."""
    barrier = threading.Barrier(len(requests))

    def send(request):
        barrier.wait(timeout=30)
        return request()

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def failures_recorded(action: str = "auth.sign_in_failed") -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).where(AuditEvent.action == action))


def sign_out(client) -> None:
    assert post_form(client, "/logout").status_code == 302


# -- bursts ------------------------------------------------------------------------------------


def test_a_burst_of_40_parallel_wrong_passwords_gets_only_the_allowance_checked(
    app, admin_user, password_checks
):
    email = admin_user.email

    def prepared(number: int):
        client = browser(app, f"10.20.0.{number + 1}")  # every address new: the e-mail counts
        token = csrf_token(client)
        return lambda: client.post(
            "/login", data={"email": email, "password": WRONG, "csrf_token": token}
        )

    answers = in_parallel([prepared(number) for number in range(BURST)])

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * ALLOWANCE + [429] * (BURST - ALLOWANCE)
    assert len(password_checks) == ALLOWANCE  # the other 30 never reached Argon2
    assert failures_recorded() == ALLOWANCE
    for answer in answers:
        if answer.status_code == 429:
            assert 0 < int(answer.headers["Retry-After"]) <= 15 * 60
            assert "Too many failed sign-in attempts" in answer.get_data(as_text=True)


def test_a_burst_of_wrong_current_passwords_gets_only_the_allowance_checked(
    app, viewer_client, password_checks
):
    token = csrf_token(viewer_client, "/account/password")
    session_cookie = viewer_client.get_cookie("__Host-session").value

    def prepared():
        client = app.test_client()
        client.set_cookie("__Host-session", session_cookie)
        form = {"current_password": WRONG, "new_password": "New-Password-123",
                "confirm_password": "New-Password-123", "csrf_token": token}
        return lambda: client.post("/account/password", data=form)

    answers = in_parallel([prepared() for _ in range(BURST)])

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * ALLOWANCE + [429] * (BURST - ALLOWANCE)
    assert password_checks.count(WRONG) == ALLOWANCE
    assert failures_recorded("auth.password_change_failed") == ALLOWANCE
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert "Too many wrong current passwords." in refused.get_data(as_text=True)
    assert int(refused.headers["Retry-After"]) > 0


# -- device cookies ----------------------------------------------------------------------------


def test_the_owner_signs_in_with_a_device_cookie_while_the_account_is_under_attack(
    app, admin_user
):
    owner = browser(app)
    assert login(owner, admin_user.email).status_code == 302
    sign_out(owner)
    for number in range(12):  # from other addresses...
        attempt(app, admin_user.email, address=f"198.51.100.{number + 1}")
    for number in range(12):  # ...and from the owner's own (a shared office address)
        attempt(app, f"guess{number}@example.com")

    assert attempt(app, admin_user.email, DEFAULT_PASSWORD, "198.51.100.99").status_code == 429
    assert attempt(app, admin_user.email, DEFAULT_PASSWORD).status_code == 429
    assert login(owner, admin_user.email).status_code == 302


def test_a_device_cookie_of_another_account_gives_no_exemption(app, admin_user, viewer_user):
    colleague = browser(app, "192.0.2.10")
    assert login(colleague, viewer_user.email).status_code == 302
    sign_out(colleague)
    for number in range(ALLOWANCE):
        attempt(app, admin_user.email, address=f"198.51.100.{number + 1}")

    assert login(colleague, admin_user.email).status_code == 429
    assert login(colleague, viewer_user.email).status_code == 302  # its own account: exempt


def test_a_password_reset_voids_the_device_cookies_issued_before(app, admin_user):
    # Someone who once knew the password could keep a cookie per fresh browser, each worth a
    # fresh allowance of guesses; after a reset none of them exempts anything.
    harvested = browser(app, "203.0.113.7")
    assert login(harvested, admin_user.email).status_code == 302
    sign_out(harvested)
    with app.app_context():
        accounts.reset_password(admin_user.email)
        db.session.commit()
    for number in range(ALLOWANCE):
        attempt(app, admin_user.email, address=f"198.51.100.{number + 1}")

    assert login(harvested, admin_user.email, WRONG).status_code == 429


def test_an_ipv6_client_is_counted_by_its_64_not_per_address(app, admin_user):
    for number in range(ALLOWANCE):  # a fresh address from one /64, and another account each
        attempt(app, f"nobody{number}@example.com", address=f"2001:db8:1:2::{number + 1:x}")

    assert attempt(app, admin_user.email, DEFAULT_PASSWORD, "2001:db8:1:2::ff").status_code == 429
    assert attempt(app, admin_user.email, DEFAULT_PASSWORD, "2001:db8:1:3::1").status_code == 302


def test_reset_password_lifts_the_accounts_lockout(app, admin_user, runner):
    for number in range(ALLOWANCE):
        attempt(app, admin_user.email, address=f"198.51.100.{number + 1}")
    assert attempt(app, admin_user.email, DEFAULT_PASSWORD, "192.0.2.1").status_code == 429

    result = runner.invoke(args=["users", "reset-password", admin_user.email])
    password = result.output.splitlines()[-1].split()[1]

    assert attempt(app, admin_user.email, password, "192.0.2.1").status_code == 302


def test_failures_with_a_device_cookie_count_against_that_device_only(app, admin_user):
    owner = browser(app)
    assert login(owner, admin_user.email).status_code == 302
    sign_out(owner)
    for _ in range(ALLOWANCE):
        assert login(owner, admin_user.email, WRONG).status_code == 200

    assert login(owner, admin_user.email).status_code == 429  # the device's bucket is full
    # Neither the account's nor the address's: a fresh browser at the same address signs in.
    assert attempt(app, admin_user.email, DEFAULT_PASSWORD).status_code == 302


def test_the_device_cookie_is_signed_long_lived_httponly_and_names_no_email(app, admin_user):
    owner = browser(app)
    response = login(owner, admin_user.email)

    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(DEVICE_COOKIE)]
    value, *attributes = (part.strip() for part in cookie.split(";"))
    flags = {attribute.split("=")[0].lower(): attribute for attribute in attributes}
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= flags.keys()
    assert flags["samesite"] == "SameSite=Lax" and flags["path"] == "Path=/"
    assert flags["max-age"] == f"Max-Age={180 * 24 * 3600}" and "domain" not in flags
    payload = value.partition("=")[2].split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert "admin" not in decoded.decode() and set(json.loads(decoded)) == {"account", "device"}

    # Tampered with, or signed with another key: worth nothing.
    sign_out(owner)
    owner.set_cookie(DEVICE_COOKIE, owner.get_cookie(DEVICE_COOKIE).value[:-2] + "xx")
    for number in range(ALLOWANCE):
        attempt(app, admin_user.email, address=f"198.51.100.{number + 1}")
    assert login(owner, admin_user.email).status_code == 429


def test_signing_in_again_keeps_the_device_and_another_account_replaces_it(app, admin_user):
    make_user("second@example.com", role="viewer")
    owner = browser(app)
    login(owner, admin_user.email)
    first = owner.get_cookie(DEVICE_COOKIE).value
    sign_out(owner)
    login(owner, admin_user.email)
    again = owner.get_cookie(DEVICE_COOKIE).value
    with app.test_request_context():
        assert throttle.device_of(first, admin_user.email) == throttle.device_of(
            again, admin_user.email
        )
    sign_out(owner)
    login(owner, "second@example.com")
    with app.test_request_context():
        assert throttle.device_of(owner.get_cookie(DEVICE_COOKIE).value, admin_user.email) is None


# -- the counters ------------------------------------------------------------------------------


def test_the_counters_hold_hashes_never_an_email_or_an_address(app, admin_user):
    for number in range(3):
        attempt(app, admin_user.email, address=f"203.0.113.{number + 1}")

    rows = db.session.execute(select(ThrottleCounter)).scalars().all()
    assert {row.scope for row in rows} == {"sign-in:email", "sign-in:address"}
    for row in rows:
        assert len(row.key) == 64 and int(row.key, 16) >= 0
        assert "@" not in row.key and "203.0.113" not in row.key


def test_reservations_are_all_or_nothing_windows_end_and_releases_give_back(app, monkeypatch):
    tight = throttle.Rule("test:tight", 2, timedelta(minutes=15))
    loose = throttle.Rule("test:loose", 100, timedelta(minutes=15))

    first = throttle.reserve((tight, "x"))
    second = throttle.reserve((tight, "x"))
    assert first.granted and first.first and second.granted and not second.first
    refused = throttle.reserve((loose, "y"), (tight, "x"))
    assert not refused.granted and 14 * 60 < refused.retry_after <= 15 * 60
    assert throttle.reserve((loose, "y")).first  # the refused reservation took nothing

    throttle.release(second)
    assert throttle.reserve((tight, "x")).granted  # given back
    assert not throttle.reserve((tight, "x")).granted

    later = utcnow() + timedelta(minutes=16)
    monkeypatch.setattr(throttle, "utcnow", lambda: later)
    assert throttle.reserve((tight, "x")).first  # a new window
    throttle.release(first)  # its window has ended: nothing to give back to the new one
    assert throttle.reserve((tight, "x")).granted
    assert not throttle.reserve((tight, "x")).granted
    # Opening that window swept the ended ones away ("y" was not used since).
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(ThrottleCounter)) == 1


def test_parallel_reservations_that_open_windows_while_sweeping_never_deadlock(app):
    rule = throttle.Rule("test:sweep", 10, timedelta(minutes=15))
    ended = utcnow() - timedelta(minutes=1)
    subjects = [f"subject-{number}" for number in range(BURST)]
    for subject in subjects:  # every counter's window has ended: each reservation sweeps
        throttle.reserve((rule, subject))
    db.session.execute(ThrottleCounter.__table__.update().values(window_ends_at=ended))
    db.session.commit()

    def prepared(subject: str):
        def reserve():
            with app.app_context():
                return throttle.reserve((rule, subject))
        return reserve

    reservations = in_parallel([prepared(subject) for subject in subjects])

    assert all(reservation.granted and reservation.first for reservation in reservations)
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(ThrottleCounter)) == BURST
