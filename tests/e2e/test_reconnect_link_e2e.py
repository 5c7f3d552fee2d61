"""The owner of a broken connection follows a reconnect link in Chromium, with no staff session.

The provider is panva/node-oidc-provider on loopback (any login name signs in as the account
of that name, with ``<name>@example.test``); Token Vault runs for real on another port. Each
visit is a fresh browser context: no vault cookie, no staff account.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from tests.browser.fixtures import ADMIN, sign_in
from tests.support.builders import make_user
from vault.extensions import db
from vault.models import AccessLink, Connection, ConnectionStatus, Token, utcnow
from vault.services import reconnect_links
from vault.tokens.store import token_vault


@pytest.fixture
def app_config(app_config, idp_providers_file):
    return app_config


@pytest.fixture
def broken(live_server):
    """alice's connection, which needs reconnecting."""
    with live_server.app.app_context():
        connection = Connection(
            provider="idp", account_subject="alice", account_email="alice@example.test",
            account_name="E2E alice", status=ConnectionStatus.NEEDS_RECONNECT.value,
        )
        db.session.add(connection)
        db.session.commit()
        return connection.id


def issue(live_server, connection_id: int, *, now=None) -> str:
    with live_server.app.app_context():
        connection = db.session.get(Connection, connection_id)
        url = reconnect_links.issue_reconnect_link(
            connection, created_by=None, now=now or utcnow()
        )
        db.session.commit()
    assert url.startswith(live_server.url + "/reconnect/")
    return url


def fresh_page(chromium):
    context = chromium.new_context()  # no cookies: nobody signed in to the vault
    page = context.new_page()
    page.set_default_timeout(15_000)
    return context, page


def sign_in_at_provider(page, provider, login: str) -> None:
    page.wait_for_url(re.compile(rf"^{re.escape(provider.issuer)}/interaction/"))
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("anything")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name=re.compile("Continue", re.I)).click()


def follow(chromium, provider, url: str, login: str, *, check=None):
    context, page = fresh_page(chromium)
    page.goto(url)
    page.get_by_role("heading", name="Reconnect your Certified IdP account").wait_for()
    assert page.locator("#link-account").inner_text() == "a***@example.test"
    assert page.get_by_role("link").count() == 0  # nothing else of the vault to go to
    if check is not None:
        check(page)
    page.get_by_role("button", name="Sign in with Certified IdP").click()
    sign_in_at_provider(page, provider, login)
    page.get_by_role("heading").first.wait_for()
    return context, page


def state(live_server, connection_id: int) -> tuple[str, int, bool]:
    with live_server.app.app_context():
        connection = db.session.get(Connection, connection_id)
        tokens = db.session.scalar(select(func.count()).select_from(Token))
        used = db.session.scalars(select(AccessLink)).first().used_at is not None
        return connection.status, tokens, used


def test_the_owner_reconnects_and_the_link_then_is_spent(
    live_server, node_oidc_provider, broken, chromium, page, axe_check, caplog
):
    caplog.set_level(logging.INFO)
    url = issue(live_server, broken)
    token = url.rsplit("/", 1)[1]
    context, owner = follow(chromium, node_oidc_provider, url, "alice", check=axe_check)
    owner.get_by_role("heading", name="Thank you").wait_for()
    axe_check(owner)
    assert "a***@example.test" in owner.locator("main").inner_text()
    assert urlsplit(owner.url).path == "/reconnect/done"  # the code and state left the address bar
    assert not any(cookie["name"] == "__Host-remember" for cookie in context.cookies())
    context.close()

    assert state(live_server, broken) == (ConnectionStatus.ACTIVE.value, 3, True)
    with live_server.app.app_context():
        refresh = token_vault.get(db.session.get(Connection, broken), "refresh")
    assert node_oidc_provider.introspect(refresh)["active"] is True

    # The same link again, from another fresh browser: spent.
    page.goto(url)
    page.get_by_role("heading", name="This link cannot be used").wait_for()
    assert "already used" in page.locator("main").inner_text()
    # The server's access log lines name the path, never the token.
    assert '"GET /reconnect/[REDACTED] HTTP/1.1" 410' in caplog.text
    assert token not in caplog.text


def test_another_account_is_refused_and_nothing_is_stored(
    live_server, node_oidc_provider, broken, chromium
):
    url = issue(live_server, broken)
    context, intruder = follow(chromium, node_oidc_provider, url, "bob")
    intruder.get_by_role("heading", name="This link cannot be used").wait_for()
    assert "another account" in intruder.locator("main").inner_text()
    context.close()
    assert state(live_server, broken) == (ConnectionStatus.NEEDS_RECONNECT.value, 0, False)


def test_an_expired_link_shows_a_clear_page(live_server, node_oidc_provider, broken, page):
    url = issue(live_server, broken, now=utcnow() - timedelta(hours=73))
    response = page.goto(url)
    assert response.status == 410
    page.get_by_role("heading", name="This link cannot be used").wait_for()
    assert "expired" in page.locator("main").inner_text()
    assert page.get_by_role("button").count() == 0
    assert "GET /auth" not in " ".join(node_oidc_provider.requests_seen())


def test_an_admin_makes_a_link_copies_it_once_and_it_works(
    live_server, node_oidc_provider, broken, chromium, page, axe_check, problems
):
    with live_server.app.app_context():
        make_user(ADMIN, role="admin")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/connections/{broken}")
    page.get_by_role("button", name="Create reconnect link").click()
    page.get_by_role("heading", name="Reconnect link created").wait_for()
    url = page.locator("#created-link").input_value()
    assert url.startswith(f"{live_server.url}/reconnect/")
    page.get_by_role("button", name="Copy link").click()
    page.get_by_role("button", name="Copied").wait_for()  # the static script ran under the CSP
    assert page.evaluate("navigator.clipboard.readText()") == url
    axe_check(page)
    page.goto(f"{live_server.url}/connections/{broken}")
    assert url.rsplit("/", 1)[1] not in page.content()  # listed, never shown again
    assert "admin@example.com" in page.locator("#links").inner_text()
    assert problems == []

    context, owner = follow(chromium, node_oidc_provider, url, "alice")
    owner.get_by_role("heading", name="Thank you").wait_for()
    context.close()
    assert state(live_server, broken) == (ConnectionStatus.ACTIVE.value, 3, True)
