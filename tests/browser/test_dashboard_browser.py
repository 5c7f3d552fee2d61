"""Every dashboard page in headless Chromium: sign in, look, filter, page, refresh.

Each page is saved as test-artifacts/dashboard-*.png and checked with axe-core (no serious or
critical violations). The refresh goes over real HTTP to tests/support/provider_stub.py.
"""

from __future__ import annotations

import re

import pytest

from tests.browser.fixtures import ADMIN, ARTIFACTS, sign_in
from tests.support.builders import make_user
from tests.support.refresh_fixtures import make_connection
from vault.cli.demo import seed_demo


@pytest.fixture
def app_config(app_config, providers_file, stub):
    providers_file.write_text(
        stub.providers_toml("acme", title="Acme") + '[voicenter]\npreset = "voicenter"\n',
        encoding="utf-8",
    )
    return app_config


@pytest.fixture
def seeded(app, stub):
    """An admin, 120 demo connections and one whose refresh token the stub accepts."""
    make_user(ADMIN, role="admin")
    seed_demo(120, seed=7)
    return make_connection(stub, provider="acme", subject="refresh-me", expires_in=600)


def current_section(page) -> str:
    return page.get_by_role("navigation", name="Main").locator("[aria-current=page]").inner_text()


def test_providers_connections_filters_and_pagination(
    live_server, page, seeded, screenshot, axe_check, problems
):
    sign_in(page, live_server)
    assert current_section(page) == "Providers"
    acme = page.get_by_role("article").filter(has=page.get_by_role("heading", name="Acme"))
    assert "OAuth 2.0" in acme.inner_text()
    assert acme.get_by_role("button", name="Connect Acme").is_visible()
    assert page.get_by_role("link", name="Add credentials for Voicenter").is_visible()
    screenshot("dashboard-providers")
    axe_check(page)

    page.get_by_role("link", name="Connections", exact=True).click()
    page.get_by_role("heading", name="Connections").wait_for()
    assert current_section(page) == "Connections"
    assert "Showing 1–50 of 121 connections" in page.locator("main").inner_text()
    screenshot("dashboard-connections")
    axe_check(page)

    page.get_by_label("Provider").select_option(label="Acme")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"provider=acme"))
    rows = page.locator("tbody tr")
    assert rows.count() == 50
    assert set(rows.locator(".provider-name").all_inner_texts()) == {"Acme"}
    pages = page.get_by_role("navigation", name="Pages of connections")
    pages.get_by_role("link", name="Next").click()
    page.wait_for_url(re.compile(r"after="))
    assert "provider=acme" in page.url
    assert page.get_by_label("Provider").input_value() == "acme"
    assert set(page.locator("tbody .provider-name").all_inner_texts()) == {"Acme"}
    screenshot("dashboard-connections-page-2")

    page.get_by_label("Status").select_option(label="Needs reconnect")
    page.get_by_label("Search accounts").fill("REFRESH-ME")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"q=REFRESH-ME"))
    assert "after=" not in page.url  # a new filter starts at the first page
    assert "No connections match." in page.locator("main").inner_text()
    page.get_by_label("Status").select_option(label="Any status")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"status=&"))
    assert page.locator("tbody tr").count() == 1
    assert page.get_by_role("link", name="refresh-me@example.com").is_visible()
    screenshot("dashboard-connections-filtered")
    axe_check(page)
    assert problems == []


def test_connection_detail_and_manual_refresh(
    live_server, page, seeded, stub, screenshot, axe_check, problems
):
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/connections?q=refresh-me")
    page.get_by_role("link", name="refresh-me@example.com").click()
    page.get_by_role("heading", name="Acme: refresh-me@example.com").wait_for()
    body = page.locator("main").inner_text()
    assert re.search(r"access\s+••••\S{4}\s+\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC \(in \d+ min\)", body)
    assert "connection.created" not in body and "No audit events for this connection yet." in body
    screenshot("dashboard-connection-detail")
    axe_check(page)

    page.get_by_role("button", name="Refresh now").click()
    refreshed = page.get_by_role("status").filter(has_text="Refreshed: a new access token is")
    refreshed.wait_for()
    assert stub.count() == 1
    history = page.get_by_role("region", name="History").inner_text()
    assert "token.refreshed" in history and ADMIN in history
    screenshot("dashboard-connection-refreshed")

    stub.fail_next(400, {"error": "invalid_grant", "error_description": "Token revoked."})
    page.get_by_role("button", name="Refresh now").click()
    alert = page.get_by_role("alert")
    assert "Needs reconnect: the provider refused the grant" in alert.inner_text()
    assert "needs reconnect" in page.locator("dl.facts").inner_text().lower()
    axe_check(page)
    assert problems == []


def test_health_and_audit_pages(live_server, page, seeded, screenshot, axe_check, problems):
    sign_in(page, live_server)
    page.get_by_role("link", name="Health", exact=True).click()
    page.get_by_role("heading", name="Token health").wait_for()
    assert current_section(page) == "Health"
    chart = page.get_by_role("img", name=re.compile("Credentials expiring in the next 7 days"))
    assert chart.is_visible()
    for heading in ("Expiring within 24 hours", "Needs reconnect", "Failing", "Encryption keys"):
        assert page.get_by_role("heading", name=re.compile(heading)).is_visible()
    keys = page.get_by_role("region", name="Stored values per encryption key")
    assert "current" in keys.inner_text()
    screenshot("dashboard-health")
    axe_check(page)

    page.get_by_role("button", name="Refresh all expiring").click()
    page.get_by_role("status").filter(has_text="Refresh of everything expiring within").wait_for()
    screenshot("dashboard-health-refreshed")

    page.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_role("heading", name="Audit log").wait_for()
    assert current_section(page) == "Audit"
    screenshot("dashboard-audit")
    axe_check(page)
    page.get_by_label("Action").select_option("token.refresh_failed")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"action=token.refresh_failed"))
    actions = page.locator("tbody td:nth-child(3)").all_inner_texts()
    assert actions and set(actions) == {"token.refresh_failed"}
    if page.get_by_role("link", name="Next").count():
        page.get_by_role("link", name="Next").click()
        page.wait_for_url(re.compile(r"after="))
        assert "action=token.refresh_failed" in page.url
    screenshot("dashboard-audit-filtered")
    assert problems == []


def test_no_connections_yet_explains_how_to_connect_the_first(
    live_server, page, stub, screenshot, axe_check
):
    make_user(ADMIN, role="admin")
    sign_in(page, live_server)
    text = page.locator("main").inner_text()
    assert "No connections yet" in text and "Connect the first account" in text
    screenshot("dashboard-empty-connections-with-providers")
    axe_check(page)


@pytest.mark.parametrize("path", ["/", "/connections", "/health", "/audit"])
def test_pages_fit_a_phone_screen(live_server, chromium, seeded, path):
    context = chromium.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        phone = context.new_page()
        sign_in(phone, live_server)
        phone.goto(f"{live_server.url}{path}")
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
        name = path.strip("/") or "providers"
        ARTIFACTS.mkdir(exist_ok=True)
        phone.screenshot(path=str(ARTIFACTS / f"dashboard-phone-{name}.png"), full_page=True)
    finally:
        context.close()


def test_keyboard_focus_is_visible(live_server, page, seeded):
    sign_in(page, live_server)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    width = page.evaluate("parseFloat(getComputedStyle(document.activeElement).outlineWidth)")
    assert outline == "solid" and width >= 2
