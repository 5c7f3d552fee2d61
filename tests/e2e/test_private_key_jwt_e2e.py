"""``private_key_jwt`` client authentication at a real OpenID Certified provider.

panva/node-oidc-provider (``oidc_provider/server.mjs``) registers a second client with
``token_endpoint_auth_method: 'private_key_jwt'`` and only the public half of its key (a
JWKS); that client has no secret at all. The vault signs a client assertion with the private
half (``client_private_key_file``) for the code exchange, every refresh, revocation and staff
single sign-on; the provider checks each one (signature, ``iss``/``sub`` = client id, ``aud``,
``exp``, a ``jti`` used once) and refuses an assertion signed with another key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from sqlalchemy import select

from tests.e2e.provider_settings import ProviderSettings
from tests.support.builders import DEFAULT_PASSWORD, make_user
from vault.extensions import db
from vault.models import AuditEvent, Connection, TokenKind
from vault.oauth import tokens
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.refresh.engine import Outcome, refresh_now
from vault.tokens.store import token_vault

ADMIN = "admin@example.com"
CLIENT_ID, KEY_ID = "token-vault-pkjwt", "vault-e2e-key-1"
ACCOUNT, ACCOUNT_EMAIL = "alice", "alice@example.test"
CONNECT_KEY, STAFF_KEY = "idp", "staff"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def client_key() -> rsa.RSAPrivateKey:
    return new_key()


@dataclass(frozen=True)
class KeyClientSettings(ProviderSettings):
    """The provider's settings plus the private_key_jwt client and its public JWKS."""

    jwks: str = ""

    def environment(self, app_url: str) -> dict[str, str]:
        return {
            **super().environment(app_url),
            "PRIVATE_KEY_JWT_CLIENT_ID": CLIENT_ID,
            "PRIVATE_KEY_JWT_JWKS": self.jwks,
        }


@pytest.fixture
def oidc_provider_settings(client_key) -> ProviderSettings:
    public = RSAKey.import_key(client_key.public_key()).as_dict(private=False)
    jwks = json.dumps({"keys": [{**public, "kid": KEY_ID, "use": "sig", "alg": "RS256"}]})
    return KeyClientSettings(
        access_token_ttl=30,
        redirect_paths=(f"/connect/{CONNECT_KEY}/callback", f"/login/sso/{STAFF_KEY}/callback"),
        jwks=jwks,
    )


@pytest.fixture
def key_file(tmp_path, client_key):
    path = tmp_path / "client-key.pem"
    path.write_text(pem(client_key), encoding="utf-8")
    return path


@pytest.fixture
def app_config(app_config, providers_file, node_oidc_provider, key_file):
    """The provider to connect accounts of and to sign staff in with: no client secret."""
    common = (
        'type = "oidc"\n'
        f'server_metadata_url = "{node_oidc_provider.discovery_url}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        'token_endpoint_auth_method = "private_key_jwt"\n'
        f'client_private_key_file = "{key_file}"\n'
        f'client_key_id = "{KEY_ID}"\n'
    )
    providers_file.write_text(
        f'[{CONNECT_KEY}]\ntitle = "Certified IdP"\n{common}'
        'scope = "openid email profile offline_access"\n'
        'authorize_params = { prompt = "consent" }\noffline_access = true\n\n'
        f'[{STAFF_KEY}]\ntitle = "Staff SSO"\n{common}'
        'staff_login = true\nallowed_domains = ["example.test"]\n',
        encoding="utf-8",
    )
    return {**app_config, "VAULT_PROVIDER_TIMEOUT_SECONDS": 5}


def sign_in_and_consent(page, provider) -> None:
    """node-oidc-provider's own sign-in and consent pages."""
    page.wait_for_url(re.compile(rf"^{re.escape(provider.issuer)}/interaction/"))
    page.locator("input[name=login]").fill(ACCOUNT)
    page.locator("input[name=password]").fill("anything")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name=re.compile("Continue", re.I)).click()


def assertion_requests(provider) -> list[str]:
    return [r for r in provider.requests_seen() if r.startswith("POST /token")]


def test_connect_refresh_and_disconnect_with_a_signed_client_assertion(
    live_server, node_oidc_provider, page, screenshot
):
    provider = node_oidc_provider
    with live_server.app.app_context():
        make_user(ADMIN, role="admin")
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email", exact=True).fill(ADMIN)
    page.get_by_label("Password", exact=True).fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("button", name="Connect Certified IdP").click()
    sign_in_and_consent(page, provider)
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/connections/\d+$"))
    connection_id = int(page.url.rsplit("/", 1)[1])
    assert "Person" in page.locator("#credential-kind").inner_text()
    screenshot("private-key-jwt-connected")

    with live_server.app.app_context():
        connection = db.session.get(Connection, connection_id)
        assert connection.account_email == ACCOUNT_EMAIL
        first = token_vault.get(connection, TokenKind.REFRESH)
        result = refresh_now(connection, "cli")
        assert result.outcome is Outcome.REFRESHED, result.message
        connection = db.session.get(Connection, connection_id)
        access = token_vault.get(connection, TokenKind.ACCESS)
    assert [e["grant_type"] for e in provider.events("grant.success")] == [
        "authorization_code", "refresh_token"
    ]
    assert provider.events("grant.error") == []
    assert provider.introspect(access)["active"] is True

    page.get_by_role("link", name="Disconnect").click()
    page.get_by_role("button", name="Disconnect").click()
    page.get_by_text("access revoked at the provider").wait_for()
    assert "POST /token/revocation" in provider.requests_seen()
    assert provider.introspect(first)["active"] is False  # revoked with the client's assertion


def test_the_provider_refuses_an_assertion_signed_with_another_key(
    live_server, node_oidc_provider, page
):
    provider = node_oidc_provider
    with live_server.app.app_context():
        make_user(ADMIN, role="admin")
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email", exact=True).fill(ADMIN)
    page.get_by_label("Password", exact=True).fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("button", name="Connect Certified IdP").click()
    sign_in_and_consent(page, provider)
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/connections/\d+$"))
    connection_id = int(page.url.rsplit("/", 1)[1])

    with live_server.app.app_context():
        connection = db.session.get(Connection, connection_id)
        refresh_token = token_vault.get(connection, TokenKind.REFRESH)
        configured = live_server.app.extensions["providers"].get(CONNECT_KEY)
        impostor = replace(configured, client_private_key=pem(new_key()))
        with pytest.raises((GrantRejected, ProviderFailure)) as refused:
            tokens.refresh_token_grant(impostor, refresh_token, now=connection.created_at)
        assert "invalid_client" in str(refused.value)
        # The right key still works: the refused assertion changed nothing at the provider.
        result = refresh_now(connection, "cli")
        assert result.outcome is Outcome.REFRESHED, result.message
    errors = provider.events("grant.error")
    assert [(e["grant_type"], e["error"]) for e in errors] == [("refresh_token", "invalid_client")]


def test_staff_sign_in_with_a_signed_client_assertion(live_server, node_oidc_provider, page):
    provider = node_oidc_provider
    with live_server.app.app_context():
        make_user(ACCOUNT_EMAIL, role="viewer", password=None)  # only single sign-on
    page.goto(f"{live_server.url}/login")
    page.get_by_role("button", name="Sign in with Staff SSO").click()
    sign_in_and_consent(page, provider)
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/(login)?$"))
    assert page.url == f"{live_server.url}/"
    with live_server.app.app_context():
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "auth.sign_in")
        ).all()
        assert [(e.actor, e.detail) for e in events] == [(ACCOUNT_EMAIL, f"sso:{STAFF_KEY}")]
    assert [e["grant_type"] for e in provider.events("grant.success")] == ["authorization_code"]
    assert provider.events("grant.error") == []
