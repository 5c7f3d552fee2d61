"""The device authorization grant (RFC 8628) at a real provider, in Chromium.

panva/node-oidc-provider (OpenID Certified) with its device flow enabled and a client allowed
the device-code grant. An admin presses Connect; a second browser page, as the person with
the account, opens the verification URL, signs in at the provider, enters the code shown on
the first page and approves (or aborts); the first page, whose script has the vault poll the
provider on the server, lands on the new connection (or says access was denied).
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from vault.extensions import db
from vault.models import Connection, DeviceGrant
from vault.refresh.engine import refresh_now
from vault.services.accounts import create_user
from vault.tokens.store import token_vault

ADMIN, PASSWORD = "admin@example.com", "e2e-admin-password-123"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def app_config(app_config, providers_file, node_oidc_provider):
    providers_file.write_text(f"""
[console]
title = "Certified IdP console"
type = "oidc"
flow = "device"
server_metadata_url = "{node_oidc_provider.discovery_url}"
client_id = "{node_oidc_provider.client_id}-device"
client_secret = "{node_oidc_provider.client_secret}"
scope = "openid email profile offline_access"
offline_access = true
""")
    return app_config


@pytest.fixture
def admin(live_server):
    with live_server.app.app_context():
        create_user(ADMIN, "admin", PASSWORD)
        db.session.commit()
    return ADMIN


def press_connect(page, live_server) -> str:
    """Sign in, press Connect; returns the user code the grant's page shows."""
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Providers").wait_for()
    page.get_by_role("button", name="Connect Certified IdP console").click()
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/device-grants/\d+$"))
    page.get_by_role("heading", name="Connect Certified IdP console with a code").wait_for()
    return page.locator("#device-user-code").inner_text().strip()


def enter_code(other, page, node_oidc_provider, user_code: str) -> None:
    """The second page: open the verification URL shown on the first, enter the code."""
    verification = page.get_by_role("link", name=re.compile(r"device$")).get_attribute("href")
    assert verification == f"{node_oidc_provider.issuer}/device"
    other.goto(verification)
    other.locator("input[name=user_code]").fill(user_code)
    other.get_by_role("button", name="Continue").click()
    other.get_by_role("heading", name="Confirm Device").wait_for()


def test_approve_in_a_second_page_and_land_on_the_connection(
    live_server, node_oidc_provider, admin, page, screenshot, axe_check, problems
):
    user_code = press_connect(page, live_server)
    html = page.content()
    assert re.fullmatch(r"[A-Z0-9-]{6,}", user_code)
    assert page.locator("svg[role=img][aria-label='QR code of the verification URL']").count() == 1
    axe_check(page)
    screenshot("device-grant-code")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280, "no horizontal scroll at 1280 px"

    other = page.context.new_page()
    enter_code(other, page, node_oidc_provider, user_code)
    other.get_by_role("button", name="Continue").click()
    # node-oidc-provider's own sign-in and consent pages
    other.locator("input[name=login]").fill("dora")
    other.locator("input[name=password]").fill("anything")
    other.locator("button[type=submit]").click()
    other.get_by_role("button", name=re.compile("Continue", re.I)).click()
    other.get_by_role("heading", name="Sign-in Success").wait_for()

    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/connections/\d+$"),
                      timeout=30_000)
    body = page.locator("main").inner_text()
    assert "Connected dora@example.test at Certified IdP console with a device code" in body
    screenshot("device-grant-connection")
    assert problems == []

    grants = [event for event in node_oidc_provider.events("grant.success")
              if event["grant_type"] == DEVICE_GRANT]
    assert len(grants) == 1
    with live_server.app.app_context():
        connection = db.session.scalars(select(Connection)).one()
        assert (connection.provider, connection.account_email) == ("console", "dora@example.test")
        access = token_vault.get(connection, "access")
        grant = db.session.scalars(select(DeviceGrant)).one()
        assert (grant.status, grant.connection_id, grant.ciphertext) == (
            "approved", connection.id, None)
    assert node_oidc_provider.introspect(access)["active"] is True

    # The refresh token it came with is renewed by the usual refresh engine.
    with live_server.app.app_context():
        connection = db.session.scalars(select(Connection)).one()
        assert token_vault.get(connection, "refresh"), "offline_access brought a refresh token"
        assert refresh_now(connection, actor="cli").outcome.value == "refreshed"
        db.session.expire_all()
        renewed = token_vault.get(db.session.get(Connection, connection.id), "access")
    assert renewed != access and node_oidc_provider.introspect(renewed)["active"] is True
    assert "refresh_token" in [event["grant_type"] for event in
                               node_oidc_provider.events("grant.success")]
    assert user_code not in html.split('id="device-user-code"', 1)[0]


def test_a_denial_in_the_second_page_ends_on_the_denied_page(
    live_server, node_oidc_provider, admin, page, screenshot, axe_check
):
    user_code = press_connect(page, live_server)
    other = page.context.new_page()
    enter_code(other, page, node_oidc_provider, user_code)
    other.get_by_role("button", name="[ Abort ]").click()

    page.get_by_role("heading", name="Certified IdP console: Access was denied").wait_for(
        timeout=30_000)
    assert "refused access (access_denied)" in page.locator("main").inner_text()
    axe_check(page)
    screenshot("device-grant-denied")
    with live_server.app.app_context():
        assert db.session.scalars(select(Connection)).all() == []
        assert db.session.scalars(select(DeviceGrant)).one().status == "denied"
