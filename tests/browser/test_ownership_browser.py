"""Owners, tags and offboarding in headless Chromium, at 1280 px wide, checked with axe-core.

Screenshots: test-artifacts/14-connection-owner.png, 14-connections-list.png, 14-people.png.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.browser.fixtures import ADMIN, sign_in
from tests.support.builders import make_user
from tests.support.refresh_fixtures import make_connection
from vault.cli.demo import seed_demo
from vault.extensions import db
from vault.models import Connection, ConnectionStatus, ConnectionTag
from vault.services.service_keys import create_key, record_consumer

WIDTH = 1280
LEAVER = "dana.leaver@example.com"
LONG_ERROR = ("The provider answered 503 Service Unavailable: upstream connect error or "
              "disconnect/reset before headers. reset reason: connection termination; "
              "retried 7 times over the last 2 hours")


@pytest.fixture
def app_config(app_config, providers_file, stub):
    providers_file.write_text(
        stub.providers_toml("acme", title="Acme") + '[voicenter]\npreset = "voicenter"\n',
        encoding="utf-8",
    )
    return app_config


@pytest.fixture
def estate(app, stub):
    """An admin, 60 demo connections, and the leaver's: owned, tagged, used, one failing."""
    make_user(ADMIN, role="admin")
    make_user(LEAVER, role="viewer")
    seed_demo(60, seed=14)
    ids = [
        make_connection(stub, provider="acme", subject=f"finance-{n}", expires_in=3600,
                        owner_email=LEAVER, purpose="Sends the monthly invoices to Acme.")
        for n in range(3)
    ]
    failing = db.session.get(Connection, ids[2])
    failing.status = ConnectionStatus.ERROR.value
    failing.failure_count = 4
    failing.last_error = LONG_ERROR
    failing.owner_email = "a.very.long.owner.address.for.wrapping@subsidiary.example.com"
    db.session.add_all(ConnectionTag(connection_id=ids[0], tag=tag)
                       for tag in ("billing", "finance", "monthly-close"))
    db.session.add(ConnectionTag(connection_id=ids[2], tag="billing"))
    key, _ = create_key("invoice-sync", [], {"acme", "voicenter"})
    db.session.flush()
    record_consumer(key.id, ids[0])
    db.session.commit()
    return ids


def no_sideways_scroll(page) -> dict:
    """The page's and every table region's widths: nothing may be wider than its box."""
    return page.evaluate("""() => ({
        page: document.documentElement.scrollWidth,
        regions: [...document.querySelectorAll('.table-scroll')].map(
            r => [r.scrollWidth, r.clientWidth]),
    })""")


def test_the_connections_list_fits_1280_px_with_owner_and_tags(
    live_server, page, estate, screenshot, axe_check, problems
):
    page.set_viewport_size({"width": WIDTH, "height": 900})
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/connections?sort=failures")
    page.get_by_role("heading", name="Connections").wait_for()
    headers = page.locator("thead th").all_inner_texts()
    assert headers[:4] == ["Account and provider", "Owner", "Tags", "Status and last error"]
    widths = no_sideways_scroll(page)
    assert widths["page"] <= WIDTH, widths
    assert all(scroll <= client for scroll, client in widths["regions"]), widths
    failing = page.locator("tbody tr").filter(has_text="finance-2@example.com")
    error = failing.locator(".last-error")
    assert error.get_attribute("title") == LONG_ERROR  # the whole error, on hover
    assert error.is_visible() and error.bounding_box()["x"] + error.bounding_box()["width"] <= WIDTH
    screenshot("14-connections-list")
    axe_check(page)

    page.get_by_label("Tag").fill("billing")
    page.get_by_label("Owner").fill(LEAVER.upper())
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"tag=billing"))
    assert page.locator("tbody tr").count() == 1
    assert page.get_by_role("link", name="finance-0@example.com").is_visible()
    page.get_by_role("link", name="finance", exact=True).click()
    page.wait_for_url(re.compile(r"tag=finance"))
    assert page.locator("tbody tr").count() == 1
    assert no_sideways_scroll(page)["page"] <= WIDTH
    assert problems == []


def test_an_admin_edits_owner_purpose_and_tags_on_the_connection_page(
    live_server, page, estate, screenshot, axe_check, problems
):
    page.set_viewport_size({"width": WIDTH, "height": 900})
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/connections/{estate[0]}")
    page.get_by_role("heading", name="Acme: finance-0@example.com").wait_for()
    used_by = page.get_by_role("region", name="Service keys using this connection")
    assert "invoice-sync" in used_by.inner_text()

    page.get_by_label("Owner", exact=True).fill("Finance.Lead@Example.com")
    page.get_by_label("Purpose", exact=True).fill("Sends the monthly invoices; owned by finance.")
    page.get_by_label("Tags", exact=True).fill("billing, finance, quarterly")
    page.get_by_role("button", name="Save details").click()
    page.get_by_role("status").filter(has_text="Saved: owner, purpose, tags.").wait_for()
    assert page.locator("#fact-owner").inner_text() == "finance.lead@example.com"
    assert page.locator("#fact-tags").inner_text().split() == ["billing", "finance", "quarterly"]
    assert "connection.owner_changed" in page.get_by_role("region", name="History").inner_text()
    assert no_sideways_scroll(page)["page"] <= WIDTH
    screenshot("14-connection-owner")
    axe_check(page)

    page.get_by_label("Tags", exact=True).fill("not a tag!")
    page.get_by_role("button", name="Save details").click()
    alert = page.get_by_role("alert")
    assert "is not a tag" in alert.inner_text()
    assert page.get_by_label("Tags", exact=True).get_attribute("aria-invalid") == "true"
    axe_check(page)

    page.get_by_role("link", name="finance.lead@example.com").click()
    page.get_by_role("heading", name="finance.lead@example.com").wait_for()
    # The refused form's page is answered with 400, which Chromium logs; nothing else.
    assert problems == ["Failed to load resource: the server responded with a status of 400 "
                        "(BAD REQUEST)"]


def test_offboarding_a_leaver_on_their_page(
    live_server, page, estate, screenshot, axe_check, problems
):
    page.set_viewport_size({"width": WIDTH, "height": 900})
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/connections/{estate[1]}")
    page.get_by_role("link", name=LEAVER).click()
    page.get_by_role("heading", name=LEAVER).wait_for()
    cards = page.get_by_role("article")
    assert cards.count() == 2  # the third was given to the long address
    first = cards.filter(has=page.get_by_role("heading", name="Acme: finance-0@example.com"))
    assert "invoice-sync" in first.inner_text()
    assert no_sideways_scroll(page)["page"] <= WIDTH
    screenshot("14-people")
    axe_check(page)

    first.get_by_label("New owner").fill("heir@example.com")
    first.get_by_role("button", name="Transfer").click()
    page.get_by_role("status").filter(has_text="now belongs to heir@example.com").wait_for()
    page.get_by_label("New owner of all 1").fill("heir@example.com")
    page.get_by_role("button", name="Transfer all").click()
    page.get_by_role("status").filter(has_text="Transferred 1 connection to").wait_for()
    assert page.get_by_text("has connected nothing and owns nothing").is_visible()
    db.session.expire_all()
    assert set(db.session.scalars(select(Connection.owner_email).where(
        Connection.id.in_(estate[:2])))) == {"heir@example.com"}

    page.goto(f"{live_server.url}/people/heir@example.com")
    card = page.get_by_role("article").filter(has=page.get_by_role(
        "heading", name="Acme: finance-1@example.com"))
    card.get_by_role("link", name="Disconnect").click()
    page.get_by_role("button", name="Disconnect").click()
    page.get_by_role("status").filter(has_text="is disconnected").wait_for()
    axe_check(page)
    assert problems == []
