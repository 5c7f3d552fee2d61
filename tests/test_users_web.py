"""/users: admins add staff (one-time password or SSO only), change roles, disable, enable."""

from __future__ import annotations

import logging
import re

from sqlalchemy import func, select, text

from tests.support.builders import csrf_token, login, make_user, post_form
from vault.models import AuditEvent, User

PASSWORD_IN_PAGE = re.compile(r'id="one-time-password"[^>]*value="([^"]+)"')


def add(client, email, role="viewer", sign_in="password"):
    return post_form(client, "/users", {"email": email, "role": role, "sign_in": sign_in},
                     token_from="/users")


def user(db, email) -> User:
    db.session.expire_all()
    return db.session.scalars(select(User).where(User.email == email)).one()


def actions(db) -> list[str]:
    return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_viewers_get_403_on_the_page_and_every_action(admin_user, viewer_client, db):
    assert viewer_client.get("/users").status_code == 403
    token = csrf_token(viewer_client, "/")
    for path in ("/users", f"/users/{admin_user.id}/role", f"/users/{admin_user.id}/disable",
                 f"/users/{admin_user.id}/enable"):
        response = viewer_client.post(path, data={"csrf_token": token, "role": "viewer",
                                                  "email": "x@example.com"})
        assert response.status_code == 403
    assert user(db, "admin@example.com").role == "admin" and user(db, "admin@example.com").enabled
    assert db.session.scalar(select(func.count()).select_from(User)) == 2


def test_the_list_shows_role_last_sign_in_and_status(admin_client, db):
    make_user("sso@example.com", password=None)
    make_user("gone@example.com", enabled=False, must_change_password=True)
    page = admin_client.get("/users").get_data(as_text=True)
    row = page[page.index("sso@example.com"):]
    assert "SSO only" in row[:2000]
    gone = page[page.index('href="/people/gone@example.com"'):]
    assert "disabled" in gone[:2500] and "must change password" in gone[:2500]
    assert "Enable" in gone[:2500]
    admin = page[page.index('href="/people/admin@example.com"'):]
    assert "never" not in admin[:1500]  # the admin signed in to get here


def test_add_with_a_one_time_password_shown_once(app, admin_client, db, caplog):
    caplog.set_level(logging.DEBUG)
    response = add(admin_client, "New.Person@Example.com", role="admin")
    assert response.status_code == 201
    password = PASSWORD_IN_PAGE.search(response.get_data(as_text=True)).group(1)
    assert 'data-copy-from="one-time-password"' in response.get_data(as_text=True)
    created = user(db, "new.person@example.com")
    assert created.role == "admin" and created.must_change_password
    assert password not in admin_client.get("/users").get_data(as_text=True)
    assert password not in caplog.text
    for values in db.session.execute(text("SELECT * FROM audit_events")):
        assert not any(password in str(value) for value in values)
    with admin_client.session_transaction() as session:
        assert password not in str(dict(session))
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "user.created")).one()
    assert event.actor == "admin@example.com" and event.detail == "role=admin; one-time password"

    # The new person signs in with it and must choose a new password first.
    newcomer = app.test_client()
    signed_in = login(newcomer, "new.person@example.com", password)
    assert signed_in.status_code == 302
    assert newcomer.get("/").headers["Location"].startswith("/account/password")


def test_add_an_sso_only_user(app, admin_client, db):
    response = add(admin_client, "sso@example.com", sign_in="sso")
    assert response.status_code == 201
    assert "no password" in response.get_data(as_text=True)
    assert 'id="one-time-password"' not in response.get_data(as_text=True)
    created = user(db, "sso@example.com")
    assert created.password_hash is None and not created.must_change_password
    assert login(app.test_client(), "sso@example.com", "").status_code != 302


def test_bad_input_is_refused_and_nothing_stored(admin_client, db):
    for email, role, sign_in, message in [
        ("not-an-address", "viewer", "password", "is not an e-mail address"),
        ("admin@example.com", "viewer", "password", "already exists"),
        ("x@example.com", "owner", "password", "Not a valid choice"),
        ("x@example.com", "viewer", "magic", "Not a valid choice"),
    ]:
        response = add(admin_client, email, role, sign_in)
        assert response.status_code == 400, email
        assert message in response.get_data(as_text=True), email
    assert db.session.scalar(select(func.count()).select_from(User)) == 1
    assert "user.created" not in actions(db)


def test_change_role_and_the_last_admin_rule(admin_client, db):
    viewer = make_user("viewer@example.com")
    response = post_form(admin_client, f"/users/{viewer.id}/role", {"role": "admin"},
                         token_from="/users")
    assert response.status_code == 303
    assert user(db, "viewer@example.com").role == "admin"
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "user.role_changed")).one()
    assert event.detail == "viewer -> admin" and event.target == "viewer@example.com"

    post_form(admin_client, f"/users/{viewer.id}/role", {"role": "viewer"}, token_from="/users")
    admin = user(db, "admin@example.com")
    refused = post_form(admin_client, f"/users/{admin.id}/role", {"role": "viewer"},
                        token_from="/users", follow_redirects=True)
    assert "is the last enabled admin" in refused.get_data(as_text=True)
    assert user(db, "admin@example.com").role == "admin"
    refused = post_form(admin_client, f"/users/{admin.id}/disable", token_from="/users",
                        follow_redirects=True)
    assert "is the last enabled admin" in refused.get_data(as_text=True)
    assert user(db, "admin@example.com").enabled
    assert actions(db).count("user.role_changed") == 2 and "user.disabled" not in actions(db)


def test_disable_ends_their_sessions_and_leads_to_their_page_then_enable(app, admin_client,
                                                                         db):
    leaver = make_user("leaver@example.com", role="admin")
    theirs = app.test_client()
    assert login(theirs, "leaver@example.com").status_code == 302
    assert theirs.get("/connections").status_code == 200

    response = post_form(admin_client, f"/users/{leaver.id}/disable", token_from="/users")
    assert response.status_code == 303
    assert response.headers["Location"] == "/people/leaver@example.com"
    assert not user(db, "leaver@example.com").enabled
    assert theirs.get("/connections").status_code == 302  # signed out at once
    assert login(app.test_client(), "leaver@example.com").status_code != 302

    response = post_form(admin_client, f"/users/{leaver.id}/enable", token_from="/users")
    assert response.status_code == 303 and response.headers["Location"] == "/users"
    assert user(db, "leaver@example.com").enabled
    assert theirs.get("/connections").status_code == 302  # the old session stays ended
    assert login(app.test_client(), "leaver@example.com").status_code == 302
    assert [a for a in actions(db) if a.startswith("user.")] == ["user.disabled", "user.enabled"]


def test_actions_need_a_csrf_token_and_an_existing_user(admin_client, db):
    viewer = make_user("viewer@example.com")
    assert admin_client.post(f"/users/{viewer.id}/disable").status_code == 400
    assert admin_client.post("/users", data={"email": "x@example.com"}).status_code == 400
    assert user(db, "viewer@example.com").enabled
    token = csrf_token(admin_client, "/users")
    assert admin_client.post("/users/999/disable", data={"csrf_token": token}).status_code == 404
