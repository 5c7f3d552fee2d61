"""Headless Chromium through Playwright, against the real app served on loopback.

The browser fixtures themselves live in ``tests/browser/fixtures.py``, shared with tests/e2e
(a plugin that tests/conftest.py registers).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.fixtures import LiveServer


@pytest.fixture
def live_server(app) -> Iterator[LiveServer]:
    """The test ``app`` served over HTTP on 127.0.0.1 (a free port) in a background thread."""
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()
