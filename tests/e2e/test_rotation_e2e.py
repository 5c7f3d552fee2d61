"""Rotating refresh tokens and e-mail only from userinfo, at a real OpenID Certified provider.

panva/node-oidc-provider (``oidc_provider/server.mjs``) is set up like the strict providers
that once cost the vault its grants: 30-second access tokens, a new refresh token on every
use (``rotateRefreshToken: true``) and ``conformIdTokenClaims: true``, so the id_token holds
only ``sub`` and the e-mail comes from userinfo alone.

With tokens that short, an Authlib session holding one renews it on its own before a request
(its leeway is 60 s) and keeps the answer to itself. At this provider the spent refresh token
the vault stored would then revoke the whole grant at the next real refresh:
``lib/actions/grants/refresh_token.js`` destroys a ``consumed`` refresh token presented again,
revokes its grant (``helpers/revoke.js``: every access and refresh token of it, and the grant)
and answers ``invalid_grant`` ("refresh token already used"). The last test shows that
happening, so the first one's success means something.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import pytest
from sqlalchemy import select

from tests.browser.fixtures import ADMIN
from tests.e2e.provider_settings import ProviderSettings
from tests.support.builders import DEFAULT_PASSWORD, make_user
from vault.extensions import db
from vault.models import AuditEvent, Connection, TokenKind
from vault.services import service_keys
from vault.tokens.store import token_vault

ACCESS_TOKEN_SECONDS = 30  # within Authlib's 60 s leeway: a held token always looks expired
ACCOUNT, ACCOUNT_EMAIL = "alice", "alice@example.test"  # server.mjs: <login>@example.test
CONNECT_KEY, STAFF_KEY = "idp", "staff"
REFRESH_BUFFER_SECONDS = 300  # a 30-second token is always due within it
REFRESH_PATHS = ["refresh-button", "refresh-due", "token-api"]
ROUNDS = 2  # every path twice in a row: six rotations


@pytest.fixture
def oidc_provider_settings() -> ProviderSettings:
    return ProviderSettings(
        access_token_ttl=ACCESS_TOKEN_SECONDS,
        rotate_refresh_token=True,
        conform_id_token_claims=True,
        redirect_paths=(f"/connect/{CONNECT_KEY}/callback", f"/login/sso/{STAFF_KEY}/callback"),
    )


@pytest.fixture
def app_config(app_config, providers_file, node_oidc_provider):
    """One provider to connect accounts of, and the same provider for staff sign-in."""
    common = (
        'type = "oidc"\n'
        f'server_metadata_url = "{node_oidc_provider.discovery_url}"\n'
        f'client_id = "{node_oidc_provider.client_id}"\n'
        f'client_secret = "{node_oidc_provider.client_secret}"\n'
    )
    providers_file.write_text(
        f'[{CONNECT_KEY}]\ntitle = "Certified IdP"\n{common}'
        'scope = "openid email profile offline_access"\n'
        'authorize_params = { prompt = "consent" }\noffline_access = true\n\n'
        f'[{STAFF_KEY}]\ntitle = "Staff SSO"\n{common}'
        'staff_login = true\nallowed_domains = ["example.test"]\n',
        encoding="utf-8",
    )
    return {
        **app_config,
        "VAULT_PROVIDER_TIMEOUT_SECONDS": 5,
        "VAULT_REFRESH_BUFFER_SECONDS": REFRESH_BUFFER_SECONDS,
    }


@pytest.fixture
def admin(live_server):
    with live_server.app.app_context():
        make_user(ADMIN, role="admin")
    return ADMIN


# -- in the browser ----------------------------------------------------------------------------


def sign_in(page, live_server) -> None:
    """Sign in with a password (the page also offers "Sign in with Staff SSO")."""
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Email", exact=True).fill(ADMIN)
    page.get_by_label("Password", exact=True).fill(DEFAULT_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("heading", name="Providers", exact=True).wait_for()


def sign_in_and_consent_at_the_provider(page, provider) -> None:
    """node-oidc-provider's own sign-in and consent pages."""
    page.wait_for_url(re.compile(rf"^{re.escape(provider.issuer)}/interaction/"))
    page.locator("input[name=login]").fill(ACCOUNT)
    page.locator("input[name=password]").fill("anything")
    page.locator("button[type=submit]").click()
    page.get_by_role("button", name=re.compile("Continue", re.I)).click()


def connect(page, live_server, provider) -> int:
    """Connect the provider's account as the signed-in admin; the new connection's id."""
    page.goto(live_server.url)
    page.get_by_role("button", name="Connect Certified IdP").click()
    sign_in_and_consent_at_the_provider(page, provider)
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/connections/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def flash_on(page) -> str:
    return page.locator("p.flash").first.inner_text().strip()


# -- what the vault holds ----------------------------------------------------------------------


def stored(live_server, connection_id: int) -> dict:
    """The connection as the vault holds it now, with its plaintext tokens."""
    with live_server.app.app_context():
        connection = db.session.get(Connection, connection_id)
        return {
            "status": connection.status,
            "last_error": connection.last_error,
            "email": connection.account_email,
            "access": token_vault.get(connection, TokenKind.ACCESS),
            "refresh": token_vault.get(connection, TokenKind.REFRESH),
            "id": token_vault.get(connection, TokenKind.ID),
        }


def jwt_claims(token: str) -> dict:
    """A JWT's payload, unverified (the vault verified it; this only looks inside)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# -- three ways a refresh happens --------------------------------------------------------------


def refresh_through(path: str, *, page, live_server, connection_id: int, service_key: str):
    """One real refresh through ``path``; "refreshed", or what went wrong instead."""
    if path == "refresh-button":
        page.goto(f"{live_server.url}/connections/{connection_id}")
        with page.expect_navigation():
            page.get_by_role("button", name="Refresh now").click()
        message = flash_on(page)
        return "refreshed" if message == "Refreshed: a new access token is stored." \
            else f"Refresh button: {message}"
    if path == "refresh-due":
        result = live_server.app.test_cli_runner().invoke(
            args=["vault", "refresh-due", "--within", str(REFRESH_BUFFER_SECONDS), "--json"]
        )
        try:
            summary = json.loads(result.stdout)  # the engine logs its warnings to stderr
        except ValueError:
            return f"refresh-due exit {result.exit_code}: {result.output.strip()[:300]}"
        if result.exit_code == 0 and (summary["due"], summary["refreshed"]) == (1, 1):
            return "refreshed"
        return f"refresh-due exit {result.exit_code}: {summary}"
    assert path == "token-api"
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/connections/{connection_id}/access-token",
        headers={"Authorization": f"Bearer {service_key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            handed_out = json.loads(answer.read())["access_token"]
    except urllib.error.HTTPError as refused:
        with refused:
            return f"token API HTTP {refused.code}: {refused.read()[:300]!r}"
    # The token handed out is the one just stored: the API refreshed the due token first.
    now = stored(live_server, connection_id)["access"]
    return "refreshed" if handed_out == now else "token API handed out another token"


def new_service_key(live_server) -> str:
    with live_server.app.app_context():
        _, key = service_keys.create_key("rotation-e2e", [CONNECT_KEY], {CONNECT_KEY, STAFF_KEY})
        db.session.commit()
    return key


def disconnect(page, live_server, connection_id: int) -> None:
    page.goto(f"{live_server.url}/connections/{connection_id}")
    page.get_by_role("link", name="Disconnect").click()
    page.get_by_role("button", name="Disconnect").click()
    page.get_by_text("access revoked at the provider").wait_for()


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_refresh_after_refresh_at_a_rotating_provider_keeps_the_grant_alive(
    live_server, node_oidc_provider, admin, page, screenshot
):
    provider = node_oidc_provider
    sign_in(page, live_server)

    connection_id = connect(page, live_server, provider)

    assert f"Connected {ACCOUNT_EMAIL}" in page.locator("main").inner_text()
    held = stored(live_server, connection_id)
    assert (held["status"], held["email"]) == ("active", ACCOUNT_EMAIL)
    id_token = jwt_claims(held["id"])
    assert id_token["sub"] == ACCOUNT
    assert not {"email", "email_verified", "name"} & set(id_token), (
        "conformIdTokenClaims: the id_token carries no e-mail, so it came from userinfo"
    )
    assert "GET /me" in provider.requests_seen()  # node-oidc-provider's userinfo endpoint
    # Nothing refreshed on its own during Connect, though the access token was "expired" to
    # Authlib all along: the refresh token stored is the one the provider issued, still live.
    assert [e["grant_type"] for e in provider.events("grant.success")] == ["authorization_code"]
    assert provider.introspect(held["refresh"])["active"] is True
    screenshot("rotation-e2e-connected")

    service_key = new_service_key(live_server)
    outcomes = []
    for path in REFRESH_PATHS * ROUNDS:
        before = stored(live_server, connection_id)
        outcome = refresh_through(path, page=page, live_server=live_server,
                                  connection_id=connection_id, service_key=service_key)
        after = stored(live_server, connection_id)
        consumed = [e["jti"] for e in provider.events("refresh_token.consumed")]
        outcomes.append({
            "path": path,
            "outcome": outcome,
            "status": after["status"],
            "last error": after["last_error"],
            "provider refused": provider.events("grant.error"),
            "grants revoked": provider.events("grant.revoked"),
            # Rotated: the token the vault presented is spent, the one it stored is live.
            "presented token consumed": consumed[-1:] == [before["refresh"]],
            "stored token live": provider.introspect(after["refresh"])["active"],
            "presented token still live": provider.introspect(before["refresh"])["active"],
            "new access token": after["access"] != before["access"],
        })
    assert outcomes == [{
        "path": path,
        "outcome": "refreshed",
        "status": "active",
        "last error": None,
        "provider refused": [],
        "grants revoked": [],
        "presented token consumed": True,
        "stored token live": True,
        "presented token still live": False,
        "new access token": True,
    } for path in REFRESH_PATHS * ROUNDS]
    # Every refresh_token grant the provider served was one of those: none behind the scenes.
    assert [e["grant_type"] for e in provider.events("grant.success")] == (
        ["authorization_code"] + ["refresh_token"] * len(REFRESH_PATHS) * ROUNDS
    )
    last = stored(live_server, connection_id)
    assert provider.introspect(last["access"])["active"] is True

    disconnect(page, live_server, connection_id)
    screenshot("rotation-e2e-disconnected")

    assert "POST /token/revocation" in provider.requests_seen()
    assert [e["route"] for e in provider.events("grant.revoked")] == ["revocation"]
    assert provider.introspect(last["refresh"])["active"] is False
    assert provider.introspect(last["access"])["active"] is False  # the whole grant is gone
    assert provider.events("grant.error") == []
    with live_server.app.app_context():
        connection = db.session.get(Connection, connection_id)
        assert connection.status == "disconnected" and connection.tokens == []


def test_staff_sign_in_when_the_id_token_carries_only_sub(
    live_server, node_oidc_provider, page, screenshot
):
    provider = node_oidc_provider
    with live_server.app.app_context():
        make_user(ACCOUNT_EMAIL, role="viewer", password=None)  # only single sign-on
    page.goto(f"{live_server.url}/login")

    page.get_by_role("button", name="Sign in with Staff SSO").click()
    sign_in_and_consent_at_the_provider(page, provider)

    # Signed in: the overview; turned away: the sign-in page, saying why.
    page.wait_for_url(re.compile(rf"^{re.escape(live_server.url)}/(login)?$"))
    assert page.url == f"{live_server.url}/", flash_on(page)
    page.get_by_role("heading", name="Providers", exact=True).wait_for()
    screenshot("rotation-e2e-staff-sign-in")
    with live_server.app.app_context():
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("auth.sign_in%"))
        ).all()
        assert [(e.action, e.actor, e.detail) for e in events] == [
            ("auth.sign_in", ACCOUNT_EMAIL, f"sso:{STAFF_KEY}")
        ]
    # The id_token held only sub: the e-mail was asked at userinfo, with the live access
    # token, and nothing was refreshed on the way.
    assert "GET /me" in provider.requests_seen()
    assert [e["grant_type"] for e in provider.events("grant.success")] == ["authorization_code"]
    assert provider.events("grant.error") == []


def test_the_provider_revokes_the_grant_when_a_spent_refresh_token_comes_back(
    live_server, node_oidc_provider, admin, page
):
    """The harness's control: what a vault that kept a spent refresh token would meet."""
    provider = node_oidc_provider
    sign_in(page, live_server)
    connection_id = connect(page, live_server, provider)
    spent = stored(live_server, connection_id)["refresh"]
    assert refresh_through("refresh-button", page=page, live_server=live_server,
                           connection_id=connection_id, service_key="") == "refreshed"
    current = stored(live_server, connection_id)["refresh"]
    assert current != spent

    status, answer = provider.post_as_client(
        "/token", {"grant_type": "refresh_token", "refresh_token": spent}
    )

    assert (status, answer["error"]) == (400, "invalid_grant")
    assert [(e["error"], e["detail"]) for e in provider.events("grant.error")] == [
        ("invalid_grant", "refresh token already used")
    ]
    assert [e["route"] for e in provider.events("grant.revoked")] == ["token"]
    assert provider.introspect(current)["active"] is False  # the whole grant went with it
    outcome = refresh_through("refresh-button", page=page, live_server=live_server,
                              connection_id=connection_id, service_key="")
    assert outcome.startswith("Refresh button: Needs reconnect: the provider refused the grant")
    assert stored(live_server, connection_id)["status"] == "needs_reconnect"
