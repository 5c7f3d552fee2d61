"""End-to-end fixtures: the real app on a loopback port, a real OIDC provider, Chromium.

Chromium, the page, screenshots and the live server come from ``tests/browser/fixtures.py``.
Without Chromium, Playwright or Node.js these tests skip, except under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.fixtures import (  # noqa: F401 - fixtures, found by name
    LiveServer,
    chromium,
    page,
    screenshot,
    unavailable,
)
from vault import create_app
from vault.extensions import db

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_port() -> int:
    return free_port()


@pytest.fixture
def live_server(app_config, app_port):
    """The app on 127.0.0.1:<app_port> with its schema created."""
    application = create_app({**app_config, "VAULT_BASE_URL": f"http://127.0.0.1:{app_port}"})
    with application.app_context():
        db.create_all()
    server = LiveServer(application, app_port).start()
    yield server
    server.stop()
    with application.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


class NodeOIDCProvider:
    """panva/node-oidc-provider (OpenID Certified) on a loopback port, as a subprocess."""

    def __init__(self, *, client_id: str, client_secret: str, redirect_uri: str):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_id, self.client_secret = client_id, client_secret
        self.log_lines: list[dict] = []
        environment = {
            **os.environ, "PORT": str(self.port), "CLIENT_ID": client_id,
            "CLIENT_SECRET": client_secret, "REDIRECT_URI": redirect_uri,
        }
        self.process = subprocess.Popen(
            ["node", "server.mjs"], cwd=PROVIDER_DIR, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 20
        while not any("ready" in line for line in self.log_lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OIDC provider did not start")
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.log_lines.append(json.loads(line))
            except ValueError:
                continue

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def introspect(self, token: str) -> dict:
        """Ask the provider whether a token is still active (RFC 7662)."""
        request = urllib.request.Request(
            f"{self.issuer}/token/introspection",
            data=f"token={token}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        credentials = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        self.process.stdout.close()


@pytest.fixture
def node_oidc_provider(app_port):
    """The real OIDC provider, with this app registered as its client."""
    if shutil.which("node") is None:
        unavailable("Node.js is not installed")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").exists():
        unavailable(f"run `npm ci --prefix {PROVIDER_DIR}` (make test does)")
    provider = NodeOIDCProvider(
        client_id="token-vault-e2e",
        client_secret="e2e-client-secret-0123456789abcdef",
        redirect_uri=f"http://127.0.0.1:{app_port}/connect/idp/callback",
    )
    yield provider
    provider.stop()
