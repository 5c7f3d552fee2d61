"""OAuth callbacks anyone can request: throttled and recorded once per address and window when
no admin is signed in, and the provider's error text shown only for a flow this browser began."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from sqlalchemy import select

from tests.support.builders import csrf_token
from tests.support.connect_flow import begin
from tests.support.oidc_stub import OIDCStub
from tests.support.refresh_fixtures import both_backends
from vault.extensions import db
from vault.models import AuditEvent

pytestmark = [both_backends, pytest.mark.shared_postgres_database]

ALLOWANCE = 20  # callbacks without an admin session per address in 15 minutes
PLANTED = "Call +1-555-0100 to restore access"  # an attacker's "error_description"


@pytest.fixture
def stub():
    with OIDCStub() as running:
        yield running


@pytest.fixture
def app_config(app_config, providers_file, stub):
    providers_file.write_text(
        "[acme]\n"
        'type = "oauth2"\nclient_id = "c"\nclient_secret = "s"\n'
        'authorize_url = "https://acme.example/authorize"\n'
        'token_url = "https://acme.example/token"\n'
        "[corp]\n"
        f'type = "oidc"\nserver_metadata_url = "{stub.discovery_url}"\n'
        f'client_id = "{stub.client_id}"\nclient_secret = "{stub.client_secret}"\n'
        'staff_login = true\nallowed_domains = ["example.com"]\n',
        encoding="utf-8",
    )
    return app_config


def callback(client, address: str = "127.0.0.1", path: str = "/connect/acme/callback", **params):
    query = urlencode(params or {"state": "a", "code": "b"})
    return client.get(f"{path}?{query}", environ_base={"REMOTE_ADDR": address})


def failures() -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "connection.failed")
    ))


# -- noise -------------------------------------------------------------------------------------


def test_callbacks_without_an_admin_session_are_recorded_once_per_address_and_window(client):
    for _ in range(5):
        assert callback(client, "192.0.2.1").status_code == 403
    for _ in range(3):
        assert callback(client, "192.0.2.2").status_code == 403

    recorded = failures()
    assert sorted(event.client_address for event in recorded) == ["192.0.2.1", "192.0.2.2"]
    assert {(event.actor, event.target, event.outcome) for event in recorded} == {
        ("anonymous", "acme", "failure")
    }


def test_callbacks_without_an_admin_session_are_throttled_per_address(client, admin_client):
    for _ in range(ALLOWANCE):
        assert callback(client, "192.0.2.1").status_code == 403

    throttled = callback(client, "192.0.2.1")

    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["Retry-After"]) <= 15 * 60
    assert "Too many answers without a signed-in administrator" in throttled.get_data(as_text=True)
    assert callback(client, "192.0.2.2").status_code == 403
    # An admin's own callbacks are not counted, wherever they come from.
    assert callback(admin_client, "192.0.2.1").status_code == 400


# -- the provider's words ------------------------------------------------------------------------


def test_a_provider_error_is_shown_only_for_a_flow_this_browser_started(admin_client):
    forged = callback(admin_client, state="not-started-here", error="access_denied",
                      error_description=PLANTED)

    page = forged.get_data(as_text=True)
    assert forged.status_code == 400 and "did not grant access" in page
    assert "555" not in page and "access_denied" not in page
    assert all("555" not in (event.detail or "") for event in failures())

    params = begin(admin_client, "acme")
    started = callback(admin_client, state=params["state"], error="access_denied",
                       error_description="The user said no")

    assert started.status_code == 400
    assert "access_denied — The user said no" in started.get_data(as_text=True)


def test_a_provider_error_on_the_staff_sign_in_callback_is_generic_unless_started_here(client):
    path = "/login/sso/corp/callback"
    forged = callback(client, path=path, state="not-started-here", error="access_denied",
                      error_description=PLANTED)
    assert forged.status_code == 302
    page = client.get("/login").get_data(as_text=True)
    assert "did not grant access" in page and "555" not in page

    started = client.post("/login/sso/corp", data={"csrf_token": csrf_token(client)})
    state = dict(parse_qsl(urlsplit(started.headers["Location"]).query))["state"]
    callback(client, path=path, state=state, error="access_denied",
             error_description="Ask your administrator")
    assert "Ask your administrator" in client.get("/login").get_data(as_text=True)
