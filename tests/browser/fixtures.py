"""Browser fixtures shared by tests/browser and tests/e2e: Chromium, a page, a live server,
screenshots and an accessibility check.

Chromium is Debian's (/usr/bin/chromium) driven by Playwright for Python; nothing is
downloaded. Without Chromium or Playwright these tests skip, except under ``CI=true``, where
that is a failure. A pytest plugin: ``tests/conftest.py`` registers it in ``pytest_plugins``,
so the fixtures (``chromium``, ``page``, ``problems``, ``screenshot``, ``axe_check``) are found
by name; the conftests and tests import the helpers (``LiveServer``, ``sign_in``,
``unavailable``, ``ADMIN``, ``ARTIFACTS``) by name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.support.builders import DEFAULT_PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
AXE_SCRIPT = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
# Served to the page from its own origin, so the Content-Security-Policy (script-src 'self')
# lets it run and the page is checked exactly as it is served.
AXE_PATH = "/__test-only__/axe.min.js"
ADMIN = "admin@example.com"  # made with tests.support.builders.DEFAULT_PASSWORD by the tests


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true, where every browser test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true requires the browser tests to run)")
    pytest.skip(reason)


# Module scope: Playwright's sync API runs one instance at a time in a process, so each test
# module stops its browser before the next module starts one.
@pytest.fixture(scope="module")
def chromium():
    """A headless Debian Chromium, launched through Playwright."""
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install -r requirements-dev.txt)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh browser context (no cookies) and page."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def problems(page) -> list[str]:
    """Console errors and page errors: any CSP violation or script error lands here."""
    found: list[str] = []
    page.on("console", lambda msg: found.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: found.append(str(error)))
    return found


@pytest.fixture
def screenshot(page) -> Callable[[str], Path]:
    """``screenshot(name)`` saves the whole current page as test-artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)

    def take(name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def axe_check():
    """``axe_check(page)``: run axe-core on the page; fail on serious or critical violations."""
    if not AXE_SCRIPT.exists():
        unavailable(f"axe-core is missing: run `npm ci --prefix {AXE_SCRIPT.parents[2]}` "
                    "(make test does)")

    def check(page) -> list[dict]:
        origin = "/".join(page.url.split("/")[:3])
        page.route(f"{origin}{AXE_PATH}", lambda route: route.fulfill(path=str(AXE_SCRIPT)))
        page.add_script_tag(url=f"{origin}{AXE_PATH}")
        results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
        serious = [
            {"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [node["target"] for node in v["nodes"]][:5]}
            for v in results["violations"] if v["impact"] in ("serious", "critical")
        ]
        assert serious == [], f"axe-core on {page.url}: {serious}"
        return results["violations"]

    return check


def sign_in(page, live_server, email: str = ADMIN, password: str = DEFAULT_PASSWORD) -> None:
    """Sign in through the form and wait for the providers overview."""
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Providers", exact=True).wait_for()


class LiveServer:
    """An application served by Werkzeug on a loopback port, in a thread."""

    def __init__(self, app, port: int = 0):
        self.app = app
        self._server = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> LiveServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
