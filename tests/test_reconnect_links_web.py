"""Reconnect and connect links in the browser flow, against the OIDC stub on loopback.

Whoever holds a link completes the provider's sign-in with no staff session; the answer counts
only for the link's account, the link works once, and its token shows up nowhere.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from tests.support.oidc_stub import ACCOUNT, OIDCStub
from tests.support.refresh_fixtures import both_backends
from vault.extensions import db
from vault.models import AccessLink, AuditEvent, Connection, ConnectionStatus, Token, utcnow
from vault.services import reconnect_links
from vault.tokens.store import token_vault

pytestmark = [both_backends, pytest.mark.shared_postgres_database]

OWNER_SUB = ACCOUNT["sub"]
LINK_ALLOWANCE = 30  # link page requests per address in 15 minutes


@pytest.fixture
def stub():
    with OIDCStub() as running:
        yield running


@pytest.fixture
def app_config(app_config, providers_file, stub):
    providers_file.write_text(
        "[stub]\n"
        'title = "Stub IdP"\ntype = "oidc"\n'
        f'server_metadata_url = "{stub.discovery_url}"\n'
        f'client_id = "{stub.client_id}"\nclient_secret = "{stub.client_secret}"\n'
        'scope = "openid email profile offline_access"\noffline_access = true\n',
        encoding="utf-8",
    )
    return {**app_config, "VAULT_BASE_URL": "http://localhost"}


@pytest.fixture
def broken(app):
    connection = Connection(
        provider="stub", account_subject=OWNER_SUB, account_email=ACCOUNT["email"],
        account_name=ACCOUNT["name"], status=ConnectionStatus.NEEDS_RECONNECT.value,
    )
    db.session.add(connection)
    db.session.commit()
    return connection


def issue(connection, *, now=None) -> str:
    url = reconnect_links.issue_reconnect_link(connection, created_by=None, now=now or utcnow())
    db.session.commit()
    return urlsplit(url).path


def form_token(page: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)


def open_and_start(browser, path: str):
    page = browser.get(path)
    assert page.status_code == 200, page.get_data(as_text=True)
    response = browser.post(path, data={"csrf_token": form_token(page.get_data(as_text=True))})
    assert response.status_code == 302, response.get_data(as_text=True)
    location = urlsplit(response.headers["Location"])
    return {k: v[0] for k, v in parse_qs(location.query).items()}


def back_from_provider(browser, stub, params):
    answer = urlsplit(stub.authorize(params))
    return browser.get(f"{answer.path}?{answer.query}")


def run_link(browser, stub, path):
    """Open, start, consent; the page the browser ends on (the thank-you page on success)."""
    answer = back_from_provider(browser, stub, open_and_start(browser, path))
    if answer.status_code != 302:
        return answer
    assert answer.headers["Location"] == "/reconnect/done"
    return browser.get("/reconnect/done")


def stored_tokens() -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(Token))


def actions() -> list[str]:
    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


# -- the owner's flow ---------------------------------------------------------------------------


def test_the_owner_reconnects_with_no_staff_session(app, stub, broken, caplog):
    caplog.set_level(logging.DEBUG)
    path = issue(broken)
    token = path.rsplit("/", 1)[1]
    browser = app.test_client()
    landing = browser.get(path)
    page = landing.get_data(as_text=True)
    assert landing.status_code == 200
    assert "Stub IdP" in page and "o***@example.com" in page and ACCOUNT["email"] not in page
    assert 'href="/connections' not in page and "Sign out" not in page  # nothing of the vault
    assert token not in page
    assert landing.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in landing.headers["Content-Security-Policy"]
    assert landing.headers["Referrer-Policy"] == "no-referrer"

    params = open_and_start(browser, path)
    assert params["redirect_uri"] == "http://localhost/connect/stub/callback"
    assert params["code_challenge_method"] == "S256" and params["nonce"] and params["state"]
    assert token not in str(params)
    answer = back_from_provider(browser, stub, params)
    assert answer.status_code == 302 and answer.headers["Location"] == "/reconnect/done"
    done = browser.get("/reconnect/done")
    text = done.get_data(as_text=True)
    assert done.status_code == 200, text
    assert "Thank you" in text and "Your Stub IdP account o***@example.com is connected" in text
    assert token not in text and "<a " not in text
    again = browser.get("/reconnect/done").get_data(as_text=True)  # a reload: no callback rerun
    assert "Thank you" in again and "o***@example.com" not in again

    db.session.expire_all()
    connection = db.session.get(Connection, broken.id)
    assert connection.status == ConnectionStatus.ACTIVE.value
    assert connection.created_by_id is None  # nobody on the staff did this
    assert token_vault.get(connection, "access") == stub.issued[-1]["access_token"]
    assert db.session.scalars(select(AccessLink)).one().used_at is not None
    assert actions() == ["reconnect_link.created", "reconnect_link.opened",
                         "reconnect_link.opened", "connection.reconnected",
                         "reconnect_link.used"]
    events = db.session.scalars(select(AuditEvent)).all()
    assert all(token not in f"{e.actor} {e.target} {e.detail}" for e in events)
    link = db.session.scalars(select(AccessLink)).one()
    assert {e.actor for e in events if e.action.endswith(("used", "reconnected"))} == {
        f"link:{link.id}"}
    assert {e.actor for e in events if e.action.endswith("opened")} == {"anonymous"}
    assert all(token not in record.getMessage() for record in caplog.records)
    with browser.session_transaction() as session:
        assert "_user_id" not in session and token not in str(dict(session))


def test_another_account_is_refused_and_nothing_is_stored(app, stub, broken):
    path = issue(broken)
    browser = app.test_client()
    stub.behaviour.account = {**ACCOUNT, "sub": "someone-else", "email": "else@example.com"}
    refused = run_link(browser, stub, path)
    assert refused.status_code == 403
    assert "another account" in refused.get_data(as_text=True)
    assert stored_tokens() == 0
    assert db.session.get(Connection, broken.id).status == ConnectionStatus.NEEDS_RECONNECT.value
    assert db.session.scalar(select(func.count()).select_from(Connection)) == 1
    assert "reconnect_link.refused" in actions()
    # The owner may still use the link with the right account.
    stub.behaviour.account = dict(ACCOUNT)
    assert run_link(browser, stub, path).status_code == 200
    assert stored_tokens() > 0


def test_a_used_link_gets_a_clear_page(app, stub, broken):
    path = issue(broken)
    browser = app.test_client()
    assert run_link(browser, stub, path).status_code == 200
    again = app.test_client().get(path)
    assert again.status_code == 410 and "already used" in again.get_data(as_text=True)


def test_an_expired_link_gets_a_clear_page(app, stub, broken):
    path = issue(broken, now=utcnow() - timedelta(hours=72, seconds=1))
    page = app.test_client().get(path)
    assert page.status_code == 410 and "expired" in page.get_data(as_text=True)
    assert actions()[-1] == "reconnect_link.refused"


def test_a_link_that_expires_during_the_flow_stores_nothing(app, stub, broken):
    path = issue(broken)
    browser = app.test_client()
    params = open_and_start(browser, path)
    link = db.session.scalars(select(AccessLink)).one()
    link.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    late = back_from_provider(browser, stub, params)
    assert late.status_code == 410 and "expired" in late.get_data(as_text=True)
    assert stored_tokens() == 0


def test_a_revoked_link_gets_a_clear_page(app, stub, broken, admin_client):
    path = issue(broken)
    link = db.session.scalars(select(AccessLink)).one()
    detail = admin_client.get(f"/connections/{broken.id}").get_data(as_text=True)
    assert "Revoke" in detail
    revoked = admin_client.post(f"/links/{link.id}/revoke",
                                data={"csrf_token": form_token(detail)})
    assert revoked.status_code == 302
    page = app.test_client().get(path)
    assert page.status_code == 410 and "withdrawn" in page.get_data(as_text=True)


def test_a_connection_reconnected_meanwhile_voids_the_link(app, stub, broken):
    path = issue(broken)
    browser = app.test_client()
    params = open_and_start(browser, path)
    broken.status = ConnectionStatus.ACTIVE.value  # an admin reconnected it meanwhile
    db.session.commit()
    late = back_from_provider(browser, stub, params)
    assert late.status_code == 410 and "connected again" in late.get_data(as_text=True)
    assert stored_tokens() == 0
    assert app.test_client().get(path).status_code == 410


def test_starting_needs_the_form_csrf_token(app, stub, broken):
    path = issue(broken)
    browser = app.test_client()
    browser.get(path)
    assert browser.post(path, data={}).status_code == 400
    assert browser.post(path, data={"csrf_token": "forged"}).status_code == 400
    assert stub.authorize_requests == []


def test_link_pages_are_throttled_per_address(app, stub, broken):
    path = issue(broken)
    browser = app.test_client()
    for _ in range(LINK_ALLOWANCE):
        assert browser.get(path).status_code == 200
    refused = browser.get(path)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    elsewhere = browser.get(path, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert elsewhere.status_code == 200


def test_an_unknown_token_is_404_and_not_recorded(app, broken):
    page = app.test_client().get("/reconnect/" + "A" * 43)
    assert page.status_code == 404 and "not valid" in page.get_data(as_text=True)
    assert actions() == []


def test_a_signed_in_admin_opening_the_link_changes_nothing_of_the_rules(
    app, stub, broken, admin_client
):
    path = issue(broken)
    stub.behaviour.account = {**ACCOUNT, "sub": "someone-else"}
    assert run_link(admin_client, stub, path).status_code == 403
    assert stored_tokens() == 0
    stub.behaviour.account = dict(ACCOUNT)
    assert run_link(admin_client, stub, path).status_code == 200
    assert db.session.get(Connection, broken.id).created_by_id is None


def test_the_token_never_reaches_the_log_lines_of_its_path(app, caplog):
    caplog.set_level(logging.INFO)
    token = "Zx" * 21 + "Q"
    logging.getLogger("werkzeug").info('127.0.0.1 - - "GET /reconnect/%s HTTP/1.1" 200 -', token)
    assert token not in caplog.text and "/reconnect/[REDACTED]" in caplog.text


# -- the admin's side ------------------------------------------------------------------------------


def test_an_admin_creates_a_reconnect_link_shown_once(app, broken, admin_client, viewer_client):
    detail = admin_client.get(f"/connections/{broken.id}").get_data(as_text=True)
    assert "Create reconnect link" in detail
    created = admin_client.post(f"/connections/{broken.id}/reconnect-link",
                                data={"csrf_token": form_token(detail)})
    page = created.get_data(as_text=True)
    assert created.status_code == 201
    url = re.search(r'value="(http://localhost/reconnect/[A-Za-z0-9_-]{43})"', page).group(1)
    assert 'data-copy-from="created-link"' in page and "/static/js/copy.js" in page
    token = url.rsplit("/", 1)[1]
    listed = admin_client.get(f"/connections/{broken.id}").get_data(as_text=True)
    assert "admin@example.com" in listed and token not in listed and "open" in listed
    assert app.test_client().get(urlsplit(url).path).status_code == 200
    viewer_page = viewer_client.get(f"/connections/{broken.id}").get_data(as_text=True)
    assert "Create reconnect link" not in viewer_page and "Revoke" not in viewer_page
    refused = viewer_client.post(f"/connections/{broken.id}/reconnect-link",
                                 data={"csrf_token": form_token(viewer_page)})
    assert refused.status_code == 403
    assert admin_client.post(f"/connections/{broken.id}/reconnect-link").status_code == 400
    with admin_client.session_transaction() as session:
        assert token not in str(dict(session))


def test_no_reconnect_link_for_an_active_connection(app, broken, admin_client):
    broken.status = ConnectionStatus.ACTIVE.value
    db.session.commit()
    detail = admin_client.get(f"/connections/{broken.id}").get_data(as_text=True)
    assert "Create reconnect link" not in detail
    refused = admin_client.post(f"/connections/{broken.id}/reconnect-link",
                                data={"csrf_token": form_token(detail)})
    assert refused.status_code == 409
    assert db.session.scalar(select(func.count()).select_from(AccessLink)) == 0


def test_a_connect_link_connects_a_new_account_with_the_expected_email(app, stub, admin_client):
    page = admin_client.get("/links").get_data(as_text=True)
    created = admin_client.post("/links", data={
        "csrf_token": form_token(page), "provider": "stub", "email": "OPS@example.com"})
    assert created.status_code == 201
    url = re.search(r'value="(http://localhost/reconnect/[^"]+)"', created.get_data(as_text=True))
    path = urlsplit(url.group(1)).path
    browser = app.test_client()
    landing = browser.get(path).get_data(as_text=True)
    assert "Connect your Stub IdP account" in landing and "o***@example.com" in landing
    assert run_link(browser, stub, path).status_code == 200
    db.session.expire_all()
    connection = db.session.scalars(select(Connection)).one()
    assert connection.account_subject == OWNER_SUB
    assert connection.created_by.email == "admin@example.com"
    listed = admin_client.get("/links").get_data(as_text=True)
    assert "ops@example.com" in listed and "used" in listed
    assert app.test_client().get(path).status_code == 410


def test_a_connect_link_refuses_another_email_or_an_unverified_one(app, stub, admin_client):
    page = admin_client.get("/links").get_data(as_text=True)
    created = admin_client.post("/links", data={
        "csrf_token": form_token(page), "provider": "stub", "email": "jane@example.com"})
    path = urlsplit(re.search(r'value="(http://[^"]+)"', created.get_data(as_text=True))
                   .group(1)).path
    refused = run_link(app.test_client(), stub, path)
    assert refused.status_code == 403 and "verified e-mail" in refused.get_data(as_text=True)
    stub.behaviour.account = {**ACCOUNT, "email": "jane@example.com", "email_verified": False}
    assert run_link(app.test_client(), stub, path).status_code == 403
    assert db.session.scalar(select(func.count()).select_from(Connection)) == 0
    assert stored_tokens() == 0


def test_connect_links_are_made_by_admins_only(app, viewer_client):
    page = viewer_client.get("/links")
    assert page.status_code == 200 and "Create connect link" not in page.get_data(as_text=True)
    refused = viewer_client.post("/links", data={
        "csrf_token": form_token(page.get_data(as_text=True)), "provider": "stub",
        "email": "a@example.com"})
    assert refused.status_code == 403


def test_a_providers_connect_link_leads_to_the_form_with_it_chosen(app, admin_client):
    start = admin_client.get("/").get_data(as_text=True)
    assert 'href="/links?provider=stub"' in start
    page = admin_client.get("/links?provider=stub").get_data(as_text=True)
    assert re.search(r'<option value="stub"[^>]*selected', page)
