"""The service-key and user pages in headless Chromium: reached from the menu, readable
(axe-core), 1280 px wide without sideways scrolling, and a new key copied with its button."""

from __future__ import annotations

import pytest

from tests.browser.fixtures import ADMIN, sign_in
from tests.support.builders import make_user
from tests.support.refresh_fixtures import make_api_key_connection
from vault.extensions import db
from vault.models import ConnectionTag
from vault.services import service_keys


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(
        '[voicenter]\npreset = "voicenter"\n[whatsapp]\npreset = "whatsapp"\n'
        '[greeninvoice]\npreset = "greeninvoice"\n', encoding="utf-8"
    )
    return app_config


@pytest.fixture
def staffed(app):
    """An admin, colleagues in every state, and keys that fetched tokens."""
    make_user(ADMIN, role="admin")
    make_user("dana.viewer@example.com")
    make_user("sso.only@example.com", password=None)
    make_user("left.company@example.com", enabled=False, must_change_password=True)
    billing = make_api_key_connection("voicenter", "billing-line", "vc-billing-key-0000")
    db.session.add(ConnectionTag(connection_id=billing, tag="billing"))
    _, key = service_keys.create_key("billing-export", ["voicenter"], {"voicenter"},
                                     tags=["billing"], actor="cli")
    service_keys.create_key("whatsapp-bot", ["whatsapp"], {"whatsapp"}, actor="cli")
    rotating, _ = service_keys.create_key("reports", [], set(), actor="cli")
    db.session.commit()
    service_keys.rotate_key(rotating.name)
    db.session.commit()
    client = app.test_client()
    answer = client.get(f"/api/v1/connections/{billing}/access-token",
                        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200


def no_sideways_scroll(page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{page.url} is {overflow}px wider than the window"


def test_service_keys_list_create_copy_and_key_page(live_server, page, staffed, screenshot,
                                                    axe_check, problems):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                   origin=live_server.url)
    sign_in(page, live_server)
    page.get_by_role("link", name="Service keys", exact=True).click()
    page.get_by_role("heading", name="Service keys", exact=True).wait_for()
    table = page.get_by_role("region", name="Table of service keys").inner_text()
    assert "billing-export" in table and "in overlap" in table and "billing" in table
    no_sideways_scroll(page)
    screenshot("14-service-keys")
    axe_check(page)

    page.get_by_label("Name", exact=True).fill("calendar-sync")
    page.get_by_label("WhatsApp Business").check()
    page.get_by_label("Tags", exact=True).fill("calendar, Sales")
    page.get_by_label("Expires after (days)").fill("365")
    page.get_by_role("button", name="Create service key").click()
    page.get_by_role("heading", name="Service key calendar-sync created").wait_for()
    key = page.get_by_label("Service key", exact=True).input_value()
    assert key.startswith("tvk_")
    copy = page.get_by_role("button", name="Copy key")
    copy.click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == key
    no_sideways_scroll(page)
    screenshot("14-service-key-created")
    axe_check(page)

    page.get_by_role("link", name="Go to the key's page").click()
    page.get_by_role("heading", name="Service key calendar-sync").wait_for()
    assert key not in page.content()
    assert "calendar, sales" in page.inner_text("dl").replace("\n", " ").lower()
    axe_check(page)

    page.goto(f"{live_server.url}/service-keys")
    page.get_by_role("link", name="billing-export").click()
    used = page.get_by_role("region", name="Table of connections this key used").inner_text()
    assert "billing-line@example.com" in used or "billing-line" in used
    no_sideways_scroll(page)
    screenshot("14-service-key")
    axe_check(page)
    assert problems == []


def test_users_page(live_server, page, staffed, screenshot, axe_check, problems):
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server)
    page.get_by_role("link", name="Users", exact=True).click()
    page.get_by_role("heading", name="Users", exact=True).wait_for()
    table = page.get_by_role("region", name="Table of users").inner_text()
    assert "SSO only" in table and "must change password" in table and "disabled" in table
    no_sideways_scroll(page)
    screenshot("14-users")
    axe_check(page)

    page.get_by_label("E-mail", exact=True).fill("new.colleague@example.com")
    page.get_by_role("button", name="Add user").click()
    page.get_by_role("heading", name="User new.colleague@example.com added").wait_for()
    assert page.get_by_label("One-time password").input_value()
    assert page.get_by_role("button", name="Copy password").is_visible()
    axe_check(page)
    assert problems == []
