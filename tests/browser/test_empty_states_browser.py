"""The empty states in headless Chromium: with no providers file and no data, every page
says what to do next. Screenshots: test-artifacts/dashboard-empty-*.png."""

from __future__ import annotations

from tests.browser.fixtures import ADMIN, sign_in
from tests.support.builders import make_user


def test_empty_states_teach(live_server, page, screenshot, axe_check, problems):
    make_user(ADMIN, role="admin")
    sign_in(page, live_server)
    text = page.locator("main").inner_text()
    assert "No providers are configured yet" in text
    assert "providers.example.toml" in text and "VAULT_PROVIDERS_FILE" in text
    assert '[google]\npreset = "google"' in page.locator("pre").inner_text()
    screenshot("dashboard-empty-providers")
    axe_check(page)
    for path, name, expected in (
        ("/connections", "connections", "No connections yet"),
        ("/health", "health", "Nothing to watch yet"),
        ("/audit", "audit", "auth.sign_in"),  # signing in was the first event
    ):
        page.goto(f"{live_server.url}{path}")
        assert expected in page.locator("main").inner_text()
        screenshot(f"dashboard-empty-{name}")
        axe_check(page)
    assert problems == []
