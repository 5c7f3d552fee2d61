"""Who owns a new connection, and offboarding a person on ``/people/<email>``.

Connections are made through the real Connect flow against the OIDC stand-in on loopback
(tests/support/oidc_stub.py), so the default owner is the one the flow sets, and a
disconnect from the people page revokes at that provider.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from tests.support.alert_fixtures import SMTP_PASSWORD
from tests.support.builders import csrf_token, login, make_user
from tests.support.connect_flow import begin, finish
from tests.support.oidc_stub import ACCOUNT, OIDCStub
from tests.support.refresh_fixtures import both_backends
from vault.extensions import db
from vault.models import (
    AccessLink,
    AuditEvent,
    Connection,
    ConnectionStatus,
    ConnectionTag,
    Token,
)
from vault.services.service_keys import create_key, record_consumer

pytestmark = [both_backends, pytest.mark.shared_postgres_database]

LEAVER = "leaver@example.com"


@pytest.fixture
def stub():
    with OIDCStub() as running:
        yield running


@pytest.fixture
def app_config(app_config, providers_file, stub, request):
    providers_file.write_text(
        "[stub]\n"
        'title = "Stub IdP"\ntype = "oidc"\n'
        f'server_metadata_url = "{stub.discovery_url}"\n'
        f'client_id = "{stub.client_id}"\nclient_secret = "{stub.client_secret}"\n'
        'scope = "openid email profile offline_access"\noffline_access = true\n'
        '\n[voicenter]\npreset = "voicenter"\n',
        encoding="utf-8",
    )
    config = {**app_config, "VAULT_BASE_URL": "http://localhost"}
    if "smtp" in request.fixturenames:  # alert e-mail configured: links are e-mailed too
        config |= {"VAULT_SMTP_URL": request.getfixturevalue("smtp").url,
                   "VAULT_MAIL_FROM": "vault@example.com", "VAULT_ALERT_EMAILS": "ops@example.com"}
    return config


@pytest.fixture
def leaver(app):
    """A staff admin who connects things and is leaving."""
    return make_user(LEAVER, role="admin")


@pytest.fixture
def leaver_client(app, leaver):
    signed_in = app.test_client()
    assert login(signed_in, LEAVER).status_code == 302
    return signed_in


def connect(client, stub, sub: str, email: str) -> Connection:
    """Run Connect for the stub's account ``sub`` as ``client``'s user; the connection made."""
    stub.behaviour.account = {**ACCOUNT, "sub": sub, "email": email}
    finished = finish(client, stub.authorize(begin(client, "stub")))
    assert finished.status_code == 302, finished.get_data(as_text=True)
    db.session.expire_all()
    return db.session.scalars(select(Connection).where(Connection.account_subject == sub)).one()


def actions() -> list[str]:
    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def audit_of(action: str) -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def post(client, path: str, data: dict | None = None, *, token_from: str):
    return client.post(path, data={**(data or {}), "csrf_token": csrf_token(client, token_from)})


def owner_of(connection_id: int) -> str | None:
    db.session.expire_all()
    return db.session.get(Connection, connection_id).owner_email


# -- the default owner ---------------------------------------------------------------------------


def test_a_new_connection_is_owned_by_whoever_connected_it_and_a_reconnect_keeps_it(
    stub, leaver_client, admin_client
):
    connection = connect(leaver_client, stub, "cal-1", "calendar@example.com")
    assert connection.owner_email == LEAVER
    assert connection.created_by.email == LEAVER

    db.session.execute(Connection.__table__.update().values(owner_email="keeper@example.com"))
    db.session.commit()
    again = connect(admin_client, stub, "cal-1", "calendar@example.com")
    assert again.id == connection.id
    assert again.owner_email == "keeper@example.com"  # a reconnect keeps the owner
    assert again.created_by.email == "admin@example.com"


def test_pasted_credentials_are_owned_by_whoever_added_them(admin_client):
    response = post(admin_client, "/connect/voicenter/credentials",
                    {"label": "Front desk", "api_key": "vc-0123456789-abcdefghij"},
                    token_from="/")
    assert response.status_code == 302
    connection = db.session.scalars(select(Connection)).one()
    assert connection.owner_email == "admin@example.com"


def test_a_connect_link_makes_its_expected_email_the_owner(app, stub, admin_client):
    created = post(admin_client, "/links", {"provider": "stub", "email": "Ops@Example.com"},
                   token_from="/links")
    assert created.status_code == 201
    url = re.search(r'value="(http://localhost/reconnect/[^"]+)"', created.get_data(as_text=True))
    path = urlsplit(url.group(1)).path
    browser = app.test_client()
    landing = browser.get(path).get_data(as_text=True)
    started = browser.post(path, data={"csrf_token": re.search(
        r'name="csrf_token"[^>]*value="([^"]+)"', landing).group(1)})
    params = {k: v[0] for k, v in parse_qs(urlsplit(started.headers["Location"]).query).items()}
    answer = urlsplit(stub.authorize(params))
    assert browser.get(f"{answer.path}?{answer.query}").headers["Location"] == "/reconnect/done"
    db.session.expire_all()
    connection = db.session.scalars(select(Connection)).one()
    assert connection.owner_email == "ops@example.com"
    assert connection.created_by.email == "admin@example.com"


# -- the people page -----------------------------------------------------------------------------


@pytest.fixture
def estate(stub, leaver_client):
    """What the leaver connected: an owned calendar (used by a key), an owned billing account
    that needs reconnecting, and one they connected that someone else owns; plus another
    person's connection."""
    calendar = connect(leaver_client, stub, "cal-1", "calendar@example.com")
    billing = connect(leaver_client, stub, "bill-1", "billing@example.com")
    handed = connect(leaver_client, stub, "crm-1", "crm@example.com")
    handed.owner_email = "sales.lead@example.com"
    billing.status = ConnectionStatus.NEEDS_RECONNECT.value
    db.session.add(ConnectionTag(connection_id=billing.id, tag="billing"))
    other = Connection(provider="stub", account_subject="other", owner_email="x@example.com")
    db.session.add(other)
    key, _ = create_key("calendar-sync", [], {"stub"})
    db.session.flush()
    record_consumer(key.id, calendar.id)
    db.session.commit()
    return {"calendar": calendar.id, "billing": billing.id, "handed": handed.id,
            "other": other.id, "key": key.id}


def cards(page: str) -> dict[int, str]:
    found = re.findall(r'<article class="person-card" aria-labelledby="connection-(\d+)">(.*?)'
                       r"</article>", page, re.S)
    return {int(n): body for n, body in found}


def test_everyone_on_the_staff_sees_what_a_person_connected_or_owns(estate, viewer_client):
    response = viewer_client.get(f"/people/{LEAVER}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    shown = cards(page)
    assert set(shown) == {estate["calendar"], estate["billing"], estate["handed"]}
    assert "admin, enabled" in page and "3 connected or owned; owns 2" in page
    assert "owns it and connected it" in shown[estate["calendar"]]
    assert "connected it" in shown[estate["handed"]]
    assert '<a href="/people/sales.lead@example.com">sales.lead@example.com</a>' in shown[
        estate["handed"]]
    # The key is named; its page is for admins, so a viewer gets no link to it.
    assert "calendar-sync" in shown[estate["calendar"]]
    assert "/service-keys/" not in page
    assert "no service key has fetched its token" in shown[estate["billing"]]
    assert '<a class="tag" href="/connections?tag=billing">billing</a>' in shown[
        estate["billing"]]
    assert "Needs reconnect" in shown[estate["billing"]]
    for form in ("Transfer all", "New owner", "Create reconnect link", "Disconnect"):
        assert form not in page  # viewers see, only admins act


def test_an_owner_without_a_staff_account_has_a_page_too(estate, viewer_client):
    page = viewer_client.get("/people/Sales.Lead@Example.com", follow_redirects=True)
    assert page.request.path == "/people/sales.lead@example.com"
    text = page.get_data(as_text=True)
    assert "none: named as an owner only" in text
    assert set(cards(text)) == {estate["handed"]}
    assert viewer_client.get("/people/not-an-address").status_code == 404
    assert "has connected nothing and owns nothing" in viewer_client.get(
        "/people/nobody@example.com").get_data(as_text=True)


def test_viewers_cannot_act(estate, viewer_client):
    base = f"/people/{LEAVER}"
    for path, data in [
        (f"{base}/transfer", {"new_owner": "viewer@example.com"}),
        (f"{base}/connections/{estate['calendar']}/transfer", {"new_owner": "v@example.com"}),
        (f"{base}/connections/{estate['billing']}/reconnect-link", {"recipient": "v@example.com"}),
        (f"{base}/connections/{estate['calendar']}/disconnect", {}),
    ]:
        assert post(viewer_client, path, data, token_from=base).status_code == 403, path
    assert viewer_client.get(f"{base}/connections/{estate['calendar']}/disconnect"
                             ).status_code == 403
    assert owner_of(estate["calendar"]) == LEAVER
    assert db.session.scalar(select(func.count()).select_from(AccessLink)) == 0
    assert db.session.get(Connection, estate["calendar"]).status == "active"


def test_transfer_one_connection_audited(estate, admin_client):
    base = f"/people/{LEAVER}"
    response = post(admin_client, f"{base}/connections/{estate['calendar']}/transfer",
                    {"new_owner": "Heir@Example.com"}, token_from=base)
    assert response.status_code == 302 and response.headers["Location"] == base
    assert owner_of(estate["calendar"]) == "heir@example.com"
    assert owner_of(estate["billing"]) == LEAVER
    [row] = audit_of("connection.owner_changed")
    assert (row.actor, row.connection_id) == ("admin@example.com", estate["calendar"])
    assert row.detail == f"owner: {LEAVER} -> heir@example.com"
    page = admin_client.get(base).get_data(as_text=True)
    assert "now belongs to heir@example.com" in page


def test_a_bad_new_owner_changes_nothing(estate, admin_client):
    base = f"/people/{LEAVER}"
    response = post(admin_client, f"{base}/connections/{estate['calendar']}/transfer",
                    {"new_owner": "nobody"}, token_from=base)
    assert response.status_code == 400
    assert "is not an e-mail address" in cards(response.get_data(as_text=True))[
        estate["calendar"]]
    everything = post(admin_client, f"{base}/transfer", {"new_owner": ""}, token_from=base)
    assert everything.status_code == 400
    assert "Name the new owner" in everything.get_data(as_text=True)
    assert owner_of(estate["calendar"]) == LEAVER and owner_of(estate["billing"]) == LEAVER
    assert audit_of("connection.owner_changed") == []


def test_a_connection_that_is_not_theirs_is_404(estate, admin_client):
    base = f"/people/{LEAVER}"
    response = post(admin_client, f"{base}/connections/{estate['other']}/transfer",
                    {"new_owner": "heir@example.com"}, token_from=base)
    assert response.status_code == 404
    assert owner_of(estate["other"]) == "x@example.com"


def test_transfer_all_they_own(estate, admin_client):
    base = f"/people/{LEAVER}"
    response = post(admin_client, f"{base}/transfer", {"new_owner": "heir@example.com"},
                    token_from=base)
    assert response.status_code == 302
    assert owner_of(estate["calendar"]) == owner_of(estate["billing"]) == "heir@example.com"
    assert owner_of(estate["handed"]) == "sales.lead@example.com"  # not theirs to give
    rows = audit_of("connection.owner_changed")
    assert {row.connection_id for row in rows} == {estate["calendar"], estate["billing"]}
    page = admin_client.get(base).get_data(as_text=True)
    assert "Transferred 2 connections to heir@example.com." in page
    assert "Transfer all" not in page  # they own nothing now
    assert set(cards(page)) == {estate["calendar"], estate["billing"], estate["handed"]}


def test_a_reconnect_link_for_someone_else(estate, admin_client):
    base = f"/people/{LEAVER}"
    page = admin_client.get(base).get_data(as_text=True)
    assert "Create reconnect link" in cards(page)[estate["billing"]]
    assert "Create reconnect link" not in cards(page)[estate["calendar"]]  # active: none needed
    response = post(admin_client, f"{base}/connections/{estate['billing']}/reconnect-link",
                    {"recipient": "Heir@Example.com"}, token_from=base)
    assert response.status_code == 201
    shown = response.get_data(as_text=True)
    assert "Send this link to heir@example.com." in shown
    url = re.search(r'value="(http://localhost/reconnect/([^"]+))"', shown)
    link = db.session.scalars(select(AccessLink)).one()
    assert link.connection_id == estate["billing"] and link.created_by == "admin@example.com"
    assert actions()[-2:] == ["reconnect_link.created", "connection.reconnect_link_sent"]
    [sent] = audit_of("connection.reconnect_link_sent")
    assert sent.detail == f"for heir@example.com, offboarding {LEAVER}"
    events = db.session.scalars(select(AuditEvent)).all()
    assert all(url.group(2) not in f"{e.actor} {e.target} {e.detail}" for e in events)
    assert f'href="{base}"' in shown


def test_no_reconnect_link_for_an_active_connection_or_without_a_recipient(estate, admin_client):
    base = f"/people/{LEAVER}"
    active = post(admin_client, f"{base}/connections/{estate['calendar']}/reconnect-link",
                  {"recipient": "heir@example.com"}, token_from=base)
    assert active.status_code == 400
    assert "only one that needs reconnecting gets a reconnect link" in active.get_data(
        as_text=True)
    nobody = post(admin_client, f"{base}/connections/{estate['billing']}/reconnect-link",
                  {"recipient": ""}, token_from=base)
    assert nobody.status_code == 400 and "Name who the link is for." in nobody.get_data(
        as_text=True)
    assert db.session.scalar(select(func.count()).select_from(AccessLink)) == 0
    assert audit_of("connection.reconnect_link_sent") == []


def test_disconnect_revokes_at_the_provider_audited(estate, admin_client, stub):
    base = f"/people/{LEAVER}"
    path = f"{base}/connections/{estate['calendar']}/disconnect"
    confirm = admin_client.get(path)
    assert confirm.status_code == 200
    assert "Stub IdP to revoke its access" in confirm.get_data(as_text=True)
    assert db.session.get(Connection, estate["calendar"]).status == "active"  # GET: nothing

    response = post(admin_client, path, token_from=path)
    assert response.status_code == 302 and response.headers["Location"] == base
    db.session.expire_all()
    connection = db.session.get(Connection, estate["calendar"])
    assert connection.status == ConnectionStatus.DISCONNECTED.value
    assert db.session.scalar(select(func.count()).select_from(Token).where(
        Token.connection_id == connection.id)) == 0
    assert [r["token_type_hint"] for r in stub.revocations][:1] == ["refresh_token"]
    [row] = audit_of("connection.disconnected")
    assert row.actor == "admin@example.com" and row.detail.startswith("revoked=yes")
    page = admin_client.get(base).get_data(as_text=True)
    assert "access revoked at the provider" in page
    assert "/disconnect\"" not in cards(page)[estate["calendar"]]


def test_a_disconnect_without_its_csrf_token_does_nothing(estate, admin_client, stub):
    path = f"/people/{LEAVER}/connections/{estate['calendar']}/disconnect"
    assert admin_client.post(path, data={}).status_code == 400
    assert db.session.get(Connection, estate["calendar"]).status == "active"
    assert stub.revocations == []


def test_with_alert_email_the_link_is_emailed_to_its_recipient(estate, admin_client, smtp):
    base = f"/people/{LEAVER}"
    response = post(admin_client, f"{base}/connections/{estate['billing']}/reconnect-link",
                    {"recipient": "heir@example.com"}, token_from=base)
    assert response.status_code == 201
    shown = response.get_data(as_text=True)
    assert "E-mailed to heir@example.com." in shown
    url = re.search(r'value="(http://localhost/reconnect/[^"]+)"', shown).group(1)
    [mail] = smtp.messages
    assert mail["To"] == "heir@example.com"
    assert "Please reconnect billing@example.com at Stub IdP" in mail["Subject"]
    body = mail.get_body(("plain",)).get_content()
    assert url in body and f"it was {LEAVER}'s" in body
    [emailed] = audit_of("connection.reconnect_link_emailed")
    assert emailed.outcome == "success" and emailed.detail == "to heir@example.com"
    assert url.rsplit("/", 1)[1] not in str(
        [(e.detail, e.target) for e in db.session.scalars(select(AuditEvent))])


def test_a_mail_server_refusing_leaves_the_link_shown_and_says_so(estate, admin_client, smtp):
    smtp.stop()  # the mail server is down
    base = f"/people/{LEAVER}"
    response = post(admin_client, f"{base}/connections/{estate['billing']}/reconnect-link",
                    {"recipient": "heir@example.com"}, token_from=base)
    assert response.status_code == 201
    shown = response.get_data(as_text=True)
    assert "Not e-mailed (SMTP 127.0.0.1:" in shown and "send it yourself" in shown
    assert SMTP_PASSWORD not in shown
    assert re.search(r'value="http://localhost/reconnect/[^"]+"', shown)
    [emailed] = audit_of("connection.reconnect_link_emailed")
    assert emailed.outcome == "failure"
    assert db.session.scalar(select(func.count()).select_from(AccessLink)) == 1
