"""One door to the provider: connect, staff sign-in and refresh against a strict OpenID provider.

The stand-in (:class:`tests.support.oidc_stub.OIDCStub`) issues 30-second access tokens,
rotates the refresh token on every use and, like providers with reuse detection, revokes the
whole grant when a spent refresh token comes back. With tokens that short, any Authlib session
holding one refreshes it on its own before each request (its 60 s leeway); these tests prove
that nothing but the refresh engine ever asks for a refresh:

* Connect stores the refresh token the provider considers current and sends no
  ``refresh_token`` grant, whether the e-mail comes in the id_token or only from userinfo;
  the real refreshes that follow (the Refresh button, ``flask vault refresh-due``, a token-API
  fetch) succeed without the provider seeing a reuse, and Disconnect revokes the live grant.
* Staff single sign-on signs in against a provider whose id_token carries only ``sub`` (OIDC
  Core 5.4: the e-mail comes from userinfo), without a ``refresh_token`` grant.
* A guard: every ``refresh_token`` grant put on the wire has the refresh engine
  (``vault.refresh``) on its call stack.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from sqlalchemy import select
from urllib3.connectionpool import HTTPConnectionPool

from tests.support.builders import csrf_token, make_user, post_form
from tests.support.oidc_stub import OIDCStub
from tests.support.refresh_fixtures import both_backends, load
from vault.extensions import db
from vault.models import AuditEvent, TokenKind, User
from vault.services import service_keys
from vault.tokens.store import token_vault

pytestmark = [both_backends, pytest.mark.shared_postgres_database]

ACCESS_TOKEN_SECONDS = 30  # within Authlib's 60 s leeway: a held token always looks expired
CONNECT_KEY, STAFF_KEY = "stub", "staff"
STAFF_EMAIL = "ops@example.com"  # the stand-in's account
REFRESH_ENGINE = "vault.refresh"  # the package every refresh_token grant must come from
EMAIL_SOURCES = ["id_token", "userinfo"]
REFRESH_PATHS = ["refresh-button", "refresh-due", "token-api"]


# -- the provider and the app ------------------------------------------------------------------


@pytest.fixture
def stub():
    """The strict provider: 30-second access tokens, rotation, reuse detection."""
    with OIDCStub() as running:
        running.behaviour.expires_in = ACCESS_TOKEN_SECONDS
        yield running


@pytest.fixture
def app_config(app_config, providers_file, stub):
    """One provider to connect accounts of, and the same provider for staff sign-in."""
    common = (
        'type = "oidc"\n'
        f'server_metadata_url = "{stub.discovery_url}"\n'
        f'client_id = "{stub.client_id}"\n'
        f'client_secret = "{stub.client_secret}"\n'
    )
    providers_file.write_text(
        f'[{CONNECT_KEY}]\ntitle = "Stub IdP"\n{common}'
        'scope = "openid email profile offline_access"\noffline_access = true\n\n'
        f'[{STAFF_KEY}]\ntitle = "Staff SSO"\n{common}'
        'staff_login = true\nallowed_domains = ["example.com"]\n',
        encoding="utf-8",
    )
    app_config.update(VAULT_PROVIDER_TIMEOUT_SECONDS=3)
    return app_config


def email_only_from(stub: OIDCStub, source: str) -> None:
    """Where the provider tells the e-mail: in the id_token too, or only at userinfo."""
    assert source in EMAIL_SOURCES
    if source == "userinfo":
        stub.behaviour.id_token_account_claims = ("sub",)


# -- what went over the wire, and from where ---------------------------------------------------


@dataclass(frozen=True)
class SentGrant:
    """One token-endpoint request as the HTTP layer saw it, with the stack that sent it."""

    grant_type: str
    url: str
    stack: tuple[tuple[str, str], ...]  # (module, function), innermost first

    @property
    def from_refresh_engine(self) -> bool:
        return any(
            module == REFRESH_ENGINE or module.startswith(REFRESH_ENGINE + ".")
            for module, _ in self.stack
        )

    def origin(self) -> str:
        """Which flow sent it, and the call that put it on the wire (for failure messages)."""
        vault = [i for i, (module, _) in enumerate(self.stack) if module.startswith("vault.")]
        flow = [f"{module}.{function}" for module, function in reversed(self.stack)
                if module.startswith("vault.")][:4]
        # Between the innermost vault frame and the HTTP library: e.g. Authlib's auto-refresh.
        below = self.stack[: vault[0]] if vault else self.stack
        library = [f"{module}.{function}" for module, function in reversed(below)
                   if not module.startswith(_HTTP_LIBRARIES) and module != __name__]
        return f"{' > '.join(flow) or 'no vault frame'} via {' > '.join(library) or '?'}"


_HTTP_LIBRARIES = ("urllib3", "requests", "http.", "authlib.integrations.requests_client")


def _form_grant_type(body) -> str | None:
    if isinstance(body, bytes):
        body = body.decode("latin-1")
    if not isinstance(body, str) or "grant_type=" not in body:
        return None
    values = parse_qs(body).get("grant_type")
    return values[0] if values else None


@pytest.fixture
def sent_grants(monkeypatch) -> list[SentGrant]:
    """Every OAuth grant request any code sends, recorded at urllib3 (under requests and
    Authlib) in the sending thread, so the stack is the sender's, whatever module it is in."""
    sent: list[SentGrant] = []
    inside = threading.local()
    real_urlopen = HTTPConnectionPool.urlopen

    def urlopen(pool, method, url, *args, **kwargs):
        if not getattr(inside, "busy", False):  # urllib3 calls itself again on retries
            body = kwargs["body"] if "body" in kwargs else (args[0] if args else None)
            grant_type = _form_grant_type(body)
            if grant_type is not None:
                frame, stack = sys._getframe(1), []
                while frame is not None:
                    stack.append((frame.f_globals.get("__name__", "?"), frame.f_code.co_name))
                    frame = frame.f_back
                sent.append(SentGrant(grant_type, f"{pool.host}:{pool.port}{url}", tuple(stack)))
        inside.busy = True
        try:
            return real_urlopen(pool, method, url, *args, **kwargs)
        finally:
            inside.busy = False

    monkeypatch.setattr(HTTPConnectionPool, "urlopen", urlopen)
    return sent


# -- driving the flows by hand -----------------------------------------------------------------


def follow_provider(client, stub: OIDCStub, response):
    """The browser at the provider: the user consents, the provider sends it back."""
    assert response.status_code == 302, response.get_data(as_text=True)
    params = dict(parse_qsl(urlsplit(response.headers["Location"]).query))
    back = urlsplit(stub.authorize(params))
    return client.get(f"{back.path}?{back.query}")


def connect(client, stub: OIDCStub) -> int:
    """Connect the stand-in's account as the signed-in admin; the new connection's id."""
    started = post_form(client, f"/connect/{CONNECT_KEY}", token_from="/")
    finished = follow_provider(client, stub, started)
    location = finished.headers.get("Location", "")
    assert finished.status_code == 302 and location.startswith("/connections/"), (
        finished.status_code, flash_of(finished.get_data(as_text=True)) or location
    )
    return int(location.rsplit("/", 1)[1])


def sign_in_with_sso(client, stub: OIDCStub):
    started = client.post(f"/login/sso/{STAFF_KEY}", data={"csrf_token": csrf_token(client)})
    return follow_provider(client, stub, started)


def signed_in_as(client) -> str | None:
    with client.session_transaction() as session:
        user_id = session.get("_user_id")
    return db.session.get(User, int(user_id)).email if user_id else None


def sign_in_failures() -> list[str]:
    db.session.expire_all()
    return list(db.session.scalars(
        select(AuditEvent.detail).where(AuditEvent.action == "auth.sign_in_failed")
    ))


def flash_of(html: str) -> str | None:
    match = re.search(r'<p class="flash flash-(\w+)" role="\w+">([^<]*)</p>', html)
    return f"{match.group(1)}: {match.group(2)}" if match else None


def refresh_through(path: str, *, app, client, connection_id: int) -> str:
    """One real refresh through ``path``; "refreshed", or what went wrong instead."""
    if path == "refresh-button":
        response = post_form(client, f"/connections/{connection_id}/refresh",
                             token_from=f"/connections/{connection_id}", follow_redirects=True)
        message = flash_of(response.get_data(as_text=True))
        return "refreshed" if message == "success: Refreshed: a new access token is stored." \
            else f"Refresh button: {message}"
    if path == "refresh-due":
        result = app.test_cli_runner().invoke(args=["vault", "refresh-due", "--json"])
        try:
            summary = json.loads(result.stdout)  # the engine logs its warnings to stderr
        except ValueError:
            return f"refresh-due exit {result.exit_code}: {result.output.strip()[:300]}"
        if result.exit_code == 0 and summary.get("refreshed") == 1:
            return "refreshed"
        problems = [f"{p.get('outcome')}: {p.get('message')}" for p in summary.get("problems", [])]
        return f"refresh-due exit {result.exit_code}: refreshed {summary.get('refreshed')}; " \
            + "; ".join(problems)
    assert path == "token-api"
    _, key = service_keys.create_key("one-door", [CONNECT_KEY], {CONNECT_KEY, STAFF_KEY})
    db.session.commit()
    response = client.get(f"/api/v1/connections/{connection_id}/access-token",
                          headers={"Authorization": f"Bearer {key}"})
    if response.status_code == 200:
        return "refreshed"
    return f"token API HTTP {response.status_code}: {response.get_data(as_text=True)[:300]}"


def provider_view(stub: OIDCStub, connection_id: int) -> dict:
    """What the provider thinks of the grant the connection holds."""
    connection = load(connection_id)
    stored = token_vault.get(connection, TokenKind.REFRESH)
    grant = stub.grant_of(stored) if stored else None
    return {
        "stored refresh token": stub.refresh_token_state(stored),
        "grant revoked": grant.revoked if grant else "no grant",
        "spent refresh tokens presented again": stub.reuse_count,
        "connection status": connection.status,
    }


HEALTHY = {
    "stored refresh token": "current",
    "grant revoked": None,
    "spent refresh tokens presented again": 0,
    "connection status": "active",
}


# -- Connect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("email_from", EMAIL_SOURCES)
def test_connect_stores_the_refresh_token_the_provider_considers_current(
    app, admin_client, stub, email_from
):
    email_only_from(stub, email_from)

    connection_id = connect(admin_client, stub)

    connection = load(connection_id)
    assert (connection.account_subject, connection.account_email) == (
        stub.behaviour.account["sub"], STAFF_EMAIL
    )
    [grant] = stub.grants
    assert {
        "token requests during connect": stub.grant_types(),
        **provider_view(stub, connection_id),
    } == {"token requests during connect": ["authorization_code"], **HEALTHY}
    assert token_vault.get(connection, TokenKind.REFRESH) == grant.current_refresh_token
    assert grant.access_token_live(token_vault.get(connection, TokenKind.ACCESS))


@pytest.mark.parametrize("path", REFRESH_PATHS)
@pytest.mark.parametrize("email_from", EMAIL_SOURCES)
def test_a_real_refresh_after_connect_succeeds_without_reuse(
    app, admin_client, stub, sent_grants, email_from, path
):
    email_only_from(stub, email_from)
    connection_id = connect(admin_client, stub)

    outcome = refresh_through(path, app=app, client=admin_client, connection_id=connection_id)

    # The provider's view first: a reuse (and the revoked grant) is the defect itself.
    assert {"refresh": outcome, **provider_view(stub, connection_id)} == {
        "refresh": "refreshed", **HEALTHY
    }
    [grant] = stub.grants
    assert stub.grant_types() == ["authorization_code", "refresh_token"]
    assert [sent.from_refresh_engine for sent in sent_grants if
            sent.grant_type == "refresh_token"] == [True]
    connection = load(connection_id)
    assert token_vault.get(connection, TokenKind.ACCESS) == stub.refreshed[-1]["access_token"]
    assert token_vault.get(connection, TokenKind.REFRESH) == stub.refreshed[-1]["refresh_token"]

    # Disconnect then ends the grant at the provider with the token it considers current.
    done = post_form(admin_client, f"/connections/{connection_id}/disconnect", token_from="/",
                     follow_redirects=True)
    assert flash_of(done.get_data(as_text=True)) == (
        "success: Disconnected: access revoked at the provider and tokens deleted."
    )
    assert stub.revoked[0] == {"token_type_hint": "refresh_token", "found": "current"}
    assert (grant.revoked, grant.reuse_count, grant.current_refresh_token) == (
        "revocation", 0, None
    )


@pytest.mark.parametrize("email_from", EMAIL_SOURCES)
def test_disconnect_right_after_connect_ends_the_live_grant(app, admin_client, stub, email_from):
    email_only_from(stub, email_from)
    connection_id = connect(admin_client, stub)

    done = post_form(admin_client, f"/connections/{connection_id}/disconnect", token_from="/",
                     follow_redirects=True)

    assert flash_of(done.get_data(as_text=True)) == (
        "success: Disconnected: access revoked at the provider and tokens deleted."
    )
    [grant] = stub.grants
    # A spent refresh token revokes nothing: the grant would live on at the provider.
    assert [entry["found"] for entry in stub.revoked] == ["current", "access"]
    assert (grant.revoked, grant.current_refresh_token) == ("revocation", None)
    assert load(connection_id).status == "disconnected"


# -- staff single sign-on ----------------------------------------------------------------------


@pytest.mark.parametrize("email_from", EMAIL_SOURCES)
def test_staff_sign_in_takes_the_email_from_userinfo_when_the_id_token_has_none(
    app, client, stub, email_from
):
    make_user(STAFF_EMAIL, role="admin", password=None)
    email_only_from(stub, email_from)

    response = sign_in_with_sso(client, stub)

    assert {
        "signed in as": signed_in_as(client),
        "sign-in failures": sign_in_failures(),
        "token requests": stub.grant_types(),
    } == {
        "signed in as": STAFF_EMAIL,
        "sign-in failures": [],
        "token requests": ["authorization_code"],
    }
    assert response.headers["Location"] == "/"
    if email_from == "userinfo":  # OIDC Core 5.4: asked at userinfo, with the live token
        assert [request["ok"] for request in stub.userinfo_requests] == [True]
    assert stub.reuse_count == 0


# -- the guard ---------------------------------------------------------------------------------


def test_only_the_refresh_engine_sends_refresh_token_grants(app, admin_client, stub, sent_grants):
    """Every flow that touches the provider, with tokens Authlib would renew on sight."""
    email_only_from(stub, "userinfo")  # makes connect and sign-in ask userinfo too
    make_user(STAFF_EMAIL, role="admin", password=None)

    sign_in_with_sso(app.test_client(), stub)
    connection_id = connect(admin_client, stub)
    for path in REFRESH_PATHS:
        refresh_through(path, app=app, client=admin_client, connection_id=connection_id)
    post_form(admin_client, f"/connections/{connection_id}/disconnect", token_from="/")

    refreshes = [sent for sent in sent_grants if sent.grant_type == "refresh_token"]
    outside = [sent.origin() for sent in refreshes if not sent.from_refresh_engine]
    assert outside == [], f"refresh_token grants sent outside {REFRESH_ENGINE}"
    # Not vacuous: the hook saw every refresh the provider got, and the engine's among them.
    assert len(refreshes) == stub.grant_types().count("refresh_token")
    assert any(sent.from_refresh_engine for sent in refreshes)
