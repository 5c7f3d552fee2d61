"""A staff admin connects an account at a real OpenID Connect provider, in Chromium.

The provider is panva/node-oidc-provider (OpenID Certified), installed from npm and run on
loopback; Token Vault runs for real on another loopback port.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import inspect, select, text

from vault.extensions import db
from vault.models import Connection
from vault.services.accounts import create_user
from vault.tokens.store import token_vault

ADMIN, PASSWORD = "admin@example.com", "e2e-admin-password-123"


@pytest.fixture
def app_config(app_config, idp_providers_file):
    return app_config


@pytest.fixture
def admin(live_server):
    with live_server.app.app_context():
        create_user(ADMIN, "admin", PASSWORD)
        db.session.commit()
    return ADMIN


def test_connect_see_and_disconnect_at_a_real_provider(
    live_server, node_oidc_provider, admin, page, screenshot
):
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Providers").wait_for()

    page.get_by_role("button", name="Connect Certified IdP").click()
    # node-oidc-provider's own sign-in and consent pages
    page.wait_for_url(re.compile(rf"^{re.escape(node_oidc_provider.issuer)}/interaction/"))
    page.locator("input[name=login]").fill("alice")
    page.locator("input[name=password]").fill("anything")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name=re.compile("Continue", re.I)).click()

    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/connections/\d+$"))
    body = page.locator("main").inner_text()
    assert "alice@example.test" in body
    assert "Connected alice@example.test" in body
    assert re.search(r"access\s+••••\S{4}\s+\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", body)
    screenshot("connect-e2e-connection")

    with live_server.app.app_context():
        connection = db.session.scalars(select(Connection)).one()
        plaintexts = {kind: token_vault.get(connection, kind) for kind in ("access", "refresh", "id")}
        assert all(plaintexts.values()), "access, refresh and id tokens are all stored"
        with db.engine.connect() as raw:
            for table in inspect(raw).get_table_names():
                for row in raw.execute(text(f'SELECT * FROM "{table}"')):
                    dump = repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
                    for kind, value in plaintexts.items():
                        assert value not in dump, f"{kind} token in plain text in {table}"
    assert node_oidc_provider.introspect(plaintexts["refresh"])["active"] is True

    page.get_by_role("link", name="Disconnect").click()
    page.get_by_role("button", name="Disconnect").click()
    page.get_by_text("access revoked at the provider").wait_for()
    screenshot("connect-e2e-disconnected")

    assert "POST /token/revocation" in node_oidc_provider.requests_seen()
    assert node_oidc_provider.introspect(plaintexts["refresh"])["active"] is False
    with live_server.app.app_context():
        connection = db.session.scalars(select(Connection)).one()
        assert connection.status == "disconnected" and connection.tokens == []
