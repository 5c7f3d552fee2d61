"""The sign-in page in headless Chromium: labels, the Secure ``__Host-`` cookie over plain
http://127.0.0.1, the Content-Security-Policy, signing out."""

from __future__ import annotations

from tests.support.builders import DEFAULT_PASSWORD, make_user


def test_staff_sign_in_and_out_in_a_real_browser(live_server, page, screenshot):
    make_user("viewer@example.com")
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))

    page.goto(f"{live_server.url}/connections")
    assert page.url == f"{live_server.url}/login?next=/connections"
    page.get_by_label("Email", exact=True).fill("viewer@example.com")
    page.get_by_label("Password", exact=True).fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/connections")
    page.goto(f"{live_server.url}/")

    account = page.get_by_role("navigation", name="Account")
    assert "viewer@example.com" in account.inner_text()
    assert "viewer" in account.inner_text()
    screenshot("sign-in-landing")
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    assert set(cookies) == {"__Host-session", "__Host-device"}  # the device: sign-in throttling
    for cookie in cookies.values():
        assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Lax")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{live_server.url}/login")
    assert page.get_by_text("You have signed out.").is_visible()
    page.goto(f"{live_server.url}/")
    assert page.url.startswith(f"{live_server.url}/login")
    assert problems == []  # no script errors, no Content-Security-Policy violations


def test_a_wrong_password_shows_the_message_and_keeps_the_email(live_server, page, screenshot):
    make_user("viewer@example.com")

    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email", exact=True).fill("viewer@example.com")
    page.get_by_label("Password", exact=True).fill("Not-The-Password-1")
    page.get_by_role("button", name="Sign in").click()

    assert page.get_by_role("alert").inner_text() == (
        "The e-mail address or password is not correct."
    )
    assert page.get_by_label("Email", exact=True).input_value() == "viewer@example.com"
    assert page.get_by_label("Password", exact=True).input_value() == ""
    screenshot("sign-in-failed")
