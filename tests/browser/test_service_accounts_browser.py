"""A service account in headless Chromium: Add credentials, upload the key file, the
connection page, Replace key; each page checked with axe and at 1280 px without horizontal
scroll. Google's token endpoint is tests/support/google_token_stub.py.
Screenshots: test-artifacts/service-account-*.png."""

from __future__ import annotations

import json

import pytest

from tests.browser.fixtures import ADMIN, sign_in
from tests.support.builders import make_user
from tests.support.google_token_stub import SCOPES, GoogleTokenStub

ROBOT = "robot@vault-tests.iam.gserviceaccount.com"


@pytest.fixture
def google():
    with GoogleTokenStub(expires_in=30) as stub:
        yield stub


@pytest.fixture
def app_config(app_config, providers_file, google):
    providers_file.write_text(
        f'[robots]\npreset = "google_service_account"\ntoken_url = "{google.token_url}"\n'
        f'scope = "{" ".join(SCOPES)}"\n', encoding="utf-8")
    return app_config


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_upload_see_and_replace_a_key(
    live_server, page, screenshot, axe_check, problems, google, tmp_path
):
    page.set_viewport_size({"width": 1280, "height": 900})
    make_user(ADMIN, role="admin")
    first, second = google.create_key(ROBOT), google.create_key(ROBOT)
    for name, key_file in (("first", first), ("second", second)):
        (tmp_path / f"{name}.json").write_text(json.dumps(key_file), encoding="utf-8")
    sign_in(page, live_server)

    page.get_by_role("link", name="Add credentials for Google service account").click()
    page.get_by_role("heading", name="Add a Google service account").wait_for()
    assert no_horizontal_scroll(page)
    axe_check(page)
    screenshot("service-account-upload")
    page.get_by_label("JSON key file").set_input_files(str(tmp_path / "first.json"))
    page.get_by_label(SCOPES[1]).uncheck()
    page.get_by_role("button", name="Save service account").click()

    page.wait_for_url(f"{live_server.url}/connections/*")
    text = page.locator("main").inner_text()
    assert ROBOT in text and first["private_key_id"] in text and "Service account" in text
    assert "key file" in text and "PRIVATE KEY" not in page.content()
    assert no_horizontal_scroll(page)
    axe_check(page)
    screenshot("service-account-connection")
    assert google.accepted[-1][0]["scope"] == SCOPES[0]

    page.get_by_role("link", name="Replace key").click()
    assert first["private_key_id"] in page.locator("main").inner_text()
    axe_check(page)
    page.get_by_label("JSON key file").set_input_files(str(tmp_path / "second.json"))
    page.get_by_role("button", name="Replace key").click()
    page.wait_for_url(f"{live_server.url}/connections/*")
    assert second["private_key_id"] in page.locator("#credential-key").inner_text()
    screenshot("service-account-key-replaced")
    assert problems == []
