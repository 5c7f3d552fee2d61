"""The alerts page in headless Chromium: reached from the menu, readable (axe-core), and its
"Send test alert" button delivering to a real SMTP server and webhook receiver."""

from __future__ import annotations

import pytest

from tests.browser.fixtures import ADMIN, ARTIFACTS, sign_in
from tests.support.builders import make_user
from vault.extensions import db
from vault.models import Connection, utcnow
from vault.tokens.store import token_vault
from vault.worker.jobs import alerts_job


@pytest.fixture
def app_config(app_config, alert_settings):
    # VAULT_BASE_URL is vault.example.com: the live server answers on 127.0.0.1 too.
    return {**app_config, **alert_settings}


@pytest.fixture
def alerted(app):
    """An admin and one connection that needed reconnecting, alerted through both channels."""
    make_user(ADMIN, role="admin")
    connection = Connection(provider="acme", account_subject="s", account_email="jo@example.com")
    db.session.add(connection)
    db.session.commit()
    token_vault.mark_invalid(connection, "invalid_grant: Token has been revoked")
    db.session.commit()
    assert alerts_job(utcnow())


def test_the_alerts_page_and_its_test_button(
    live_server, page, alerted, smtp, receiver, screenshot, axe_check, problems
):
    sign_in(page, live_server)
    page.get_by_role("link", name="Alerts", exact=True).click()
    page.get_by_role("heading", name="Alerts", exact=True).wait_for()
    channels = page.get_by_role("region", name="Table of alert channels").inner_text()
    assert "email" in channels and "webhook" in channels and "127.0.0.1:" in channels
    recent = page.get_by_role("region", name="Table of recent alerts").inner_text()
    assert "connection.needs_reconnect" in recent and "jo@example.com" in recent
    screenshot("alerts")
    axe_check(page)

    page.get_by_role("button", name="Send test alert").click()
    page.get_by_role("status").filter(has_text="Test alert accepted by 2 channel(s).").wait_for()
    assert smtp.messages[-1]["Subject"] == "[Token Vault] Test alert"
    assert receiver.requests[-1].json()["type"] == "vault.test"
    screenshot("alerts-test-sent")
    assert problems == []


def test_the_alerts_page_fits_a_phone_screen(live_server, chromium, alerted):
    context = chromium.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        phone = context.new_page()
        sign_in(phone, live_server)
        phone.goto(f"{live_server.url}/alerts")
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"/alerts is {overflow}px wider than a phone screen"
        ARTIFACTS.mkdir(exist_ok=True)
        phone.screenshot(path=str(ARTIFACTS / "alerts-phone.png"), full_page=True)
    finally:
        context.close()
