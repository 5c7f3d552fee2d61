"""End-to-end fixtures: the real app on a loopback port, a real OIDC provider, Chromium.

Chromium, the page and screenshots are fixtures of ``tests/browser/fixtures.py`` (a plugin
that tests/conftest.py registers); the live server is its ``LiveServer``.
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
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.browser.fixtures import LiveServer, unavailable
from tests.e2e.provider_settings import ProviderSettings
from vault import create_app
from vault.extensions import db
from vault.services import handout

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
_MARKER = "/__e2e-log-marker__/"  # a path the provider does not serve (see settle)


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
    handout.dispose(application)


class NodeOIDCProvider:
    """panva/node-oidc-provider (OpenID Certified) on a loopback port, as a subprocess."""

    def __init__(
        self, *, client_id: str, client_secret: str, app_url: str,
        settings: ProviderSettings | None = None,
    ):
        settings = settings or ProviderSettings()
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.client_id, self.client_secret = client_id, client_secret
        self.settings = settings
        self.log_lines: list[dict] = []
        environment = {
            **{name: value for name, value in os.environ.items() if name not in _SETTINGS},
            "PORT": str(self.port), "CLIENT_ID": client_id, "CLIENT_SECRET": client_secret,
            **settings.environment(app_url),
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

    def settle(self) -> list[dict]:
        """Every log line the provider has written so far, read in (its stdout is read by a
        thread): a marker request is logged after them, in order, so once it is read, they are.
        """
        marker = f"{_MARKER}{uuid.uuid4().hex}"
        try:
            urllib.request.urlopen(f"{self.issuer}{marker}", timeout=10).close()
        except urllib.error.HTTPError as not_found:  # the provider has no such page
            not_found.close()
        deadline = time.monotonic() + 10
        while not any(line.get("request") == f"GET {marker}" for line in list(self.log_lines)):
            if time.monotonic() > deadline:
                raise RuntimeError("the OIDC provider's log fell silent")
            time.sleep(0.01)
        return list(self.log_lines)

    def events(self, name: str) -> list[dict]:
        """The provider's log records of one event (``grant.success``, ``grant.error``...)."""
        return [line for line in self.settle() if line.get("event") == name]

    def requests_seen(self) -> list[str]:
        """``"METHOD /path"`` of every request the provider answered, in order."""
        return [line["request"] for line in self.settle()
                if "request" in line and _MARKER not in line["request"]]

    def introspect(self, token: str) -> dict:
        """Ask the provider whether a token is still active (RFC 7662)."""
        return self.post_as_client("/token/introspection", {"token": token})[1]

    def post_as_client(self, path: str, form: dict[str, str]) -> tuple[int, dict]:
        """POST a form to the provider with this client's credentials: (status, JSON body)."""
        request = urllib.request.Request(
            f"{self.issuer}{path}",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        credentials = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, json.loads(refused.read() or b"{}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        self.process.stdout.close()


# server.mjs reads these; only ProviderSettings sets them, never the caller's environment.
_SETTINGS = frozenset({
    "REDIRECT_URI", "REDIRECT_URIS", "ACCESS_TOKEN_TTL", "ROTATE_REFRESH_TOKEN",
    "CONFORM_ID_TOKEN_CLAIMS", "TOKEN_AUTH_METHOD",
})


@pytest.fixture
def oidc_provider_settings() -> ProviderSettings:
    """How the provider behaves; override or parametrize it (see :class:`ProviderSettings`)."""
    return ProviderSettings()


@pytest.fixture
def idp_providers_file(providers_file, node_oidc_provider):
    """The providers file with ``idp``: the real provider as an OIDC provider, asking for
    consent and offline access, as the Connect and reconnect-link tests use it."""
    providers_file.write_text(f"""
[idp]
title = "Certified IdP"
type = "oidc"
server_metadata_url = "{node_oidc_provider.discovery_url}"
client_id = "{node_oidc_provider.client_id}"
client_secret = "{node_oidc_provider.client_secret}"
scope = "openid email profile offline_access"
authorize_params = {{ prompt = "consent" }}
offline_access = true
""")
    return providers_file


@pytest.fixture
def node_oidc_provider(app_port, oidc_provider_settings):
    """The real OIDC provider, with this app registered as its client."""
    if shutil.which("node") is None:
        unavailable("Node.js is not installed")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").exists():
        unavailable(f"run `npm ci --prefix {PROVIDER_DIR}` (make test does)")
    provider = NodeOIDCProvider(
        client_id="token-vault-e2e",
        client_secret="e2e-client-secret-0123456789abcdef",
        app_url=f"http://127.0.0.1:{app_port}",
        settings=oidc_provider_settings,
    )
    yield provider
    provider.stop()
