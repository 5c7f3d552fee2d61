"""Staff single sign-on against a strict OpenID Connect stand-in on loopback (real HTTP).

The stand-in (``tests/support/oidc_stub.py``) checks client authentication, the exact redirect URI,
PKCE S256 and one-time codes, and signs real ID tokens; each test makes it misbehave in one way.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import select

from tests.support.builders import csrf_token, make_user
from tests.support.oidc_stub import OIDCStub
from vault.extensions import db
from vault.models import AuditEvent, User

STAFF_EMAIL = "ops@example.com"  # the stand-in's account


@pytest.fixture
def stub():
    with OIDCStub() as running:
        yield running


@pytest.fixture
def sso_settings(stub) -> dict:
    """The staff sign-in provider's table; a test may change it before asking for ``app``."""
    return {
        "title": '"Acme SSO"',
        "type": '"oidc"',
        "server_metadata_url": f'"{stub.discovery_url}"',
        "client_id": f'"{stub.client_id}"',
        "client_secret": f'"{stub.client_secret}"',
        "staff_login": "true",
        "allowed_domains": '["example.com"]',
    }


@pytest.fixture
def app_config(app_config, providers_file, sso_settings):
    table = "".join(f"{key} = {value}\n" for key, value in sso_settings.items())
    providers_file.write_text(f"[acme]\n{table}\n[voicenter]\npreset = \"voicenter\"\n")
    return app_config


@pytest.fixture
def staff(app):
    return make_user(STAFF_EMAIL, role="admin", password=None)


def start(client, next: str | None = None) -> dict[str, str]:
    """Press "Sign in with Acme SSO"; returns the authorization request's parameters."""
    path = "/login/sso/acme" + (f"?next={next}" if next else "")
    response = client.post(path, data={"csrf_token": csrf_token(client)})
    assert response.status_code == 302, response.get_data(as_text=True)
    location = urlsplit(response.headers["Location"])
    return dict(parse_qsl(location.query)) | {"_endpoint": location._replace(query="").geturl()}


def come_back(client, url: str):
    parts = urlsplit(url)
    return client.get(f"{parts.path}?{parts.query}")


def sign_in_with_sso(client, stub, next: str | None = None):
    return come_back(client, stub.authorize(start(client, next)))


def signed_in_as(client) -> str | None:
    with client.session_transaction() as session:
        user_id = session.get("_user_id")
    return db.session.get(User, int(user_id)).email if user_id else None


def failures() -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "auth.sign_in_failed")
    ))


def test_the_sign_in_page_offers_the_staff_provider(client):
    page = client.get("/login").get_data(as_text=True)

    assert "Sign in with Acme SSO" in page
    assert 'action="/login/sso/acme"' in page
    assert "Voicenter" not in page


def test_no_single_sign_on_button_without_a_staff_provider(sso_settings, request):
    sso_settings["staff_login"] = "false"  # the same provider, for connecting only
    client = request.getfixturevalue("client")

    assert "Sign in with" not in client.get("/login").get_data(as_text=True)


def test_single_sign_on_uses_pkce_state_and_nonce_and_asks_only_who_you_are(client, stub):
    params = start(client)

    assert params["_endpoint"] == f"{stub.issuer}/authorize"
    assert params["response_type"] == "code" and params["client_id"] == stub.client_id
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 20 and len(params["nonce"]) >= 20
    assert params["scope"] == "openid email profile"
    assert params["redirect_uri"] == "http://localhost/login/sso/acme/callback"
    assert "access_type" not in params and "prompt" not in params


def test_a_verified_staff_address_signs_in(client, stub, staff):
    response = sign_in_with_sso(client, stub)

    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert signed_in_as(client) == STAFF_EMAIL
    assert STAFF_EMAIL in client.get("/").get_data(as_text=True)
    [exchange] = stub.token_requests
    assert exchange["auth_method"] == "client_secret_basic"
    assert exchange["form"]["code_verifier"]  # the stand-in checked it against the challenge
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "auth.sign_in")
    ).one()
    assert (event.actor, event.detail) == (STAFF_EMAIL, "sso:acme")


def test_the_session_holds_no_token_and_no_verifier(client, stub, staff):
    params = start(client)
    with client.session_transaction() as session:
        during = repr(dict(session))

    come_back(client, stub.authorize(params))

    with client.session_transaction() as session:
        after = repr(dict(session))
    verifier = stub.token_requests[0]["form"]["code_verifier"]
    assert verifier not in during and params["nonce"] not in during
    secrets_issued = [value for value in stub.issued[0].values() if isinstance(value, str)]
    for secret in [verifier, *secrets_issued]:
        assert secret not in after
    assert "_state_" not in after


@pytest.mark.parametrize(
    ("account", "reason"),
    [
        ({"email_verified": False}, "has not verified ops@example.com"),
        ({"email": "ops@other.example"}, "not in a domain allowed to sign in here"),
        ({"email": "stranger@example.com"}, "there is no account for stranger@example.com"),
    ],
)
def test_an_address_that_may_not_sign_in_is_turned_away(client, stub, staff, account, reason):
    stub.behaviour.account.update(account)

    response = sign_in_with_sso(client, stub)

    assert response.headers["Location"] == "/login"
    assert reason in client.get("/login").get_data(as_text=True)
    assert signed_in_as(client) is None
    [event] = failures()
    assert event.outcome == "failure" and reason in event.detail
    assert event.target == stub.behaviour.account["email"]


def test_a_disabled_account_is_turned_away(client, stub, staff):
    staff.enabled = False
    db.session.commit()

    sign_in_with_sso(client, stub)

    assert signed_in_as(client) is None
    assert "disabled" in failures()[0].detail


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_auto_create_role_creates_an_unknown_staff_member(sso_settings, stub, role, request):
    sso_settings["auto_create_role"] = f'"{role}"'
    client = request.getfixturevalue("client")

    sign_in_with_sso(client, stub)

    assert signed_in_as(client) == STAFF_EMAIL
    user = db.session.scalars(select(User).where(User.email == STAFF_EMAIL)).one()
    assert user.role == role and user.password_hash is None
    created = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "user.created")
    ).one()
    assert (created.actor, created.target) == ("sso:acme", STAFF_EMAIL)


@pytest.mark.parametrize(
    "tamper",
    [
        {"id_token_claims": {"aud": "someone-else"}},
        {"id_token_claims": {"nonce": "not-the-nonce"}},
        {"id_token_claims": {"iss": "https://evil.example"}},
        {"id_token_claims": {"exp": 1_000_000}},
        {"sign_with_foreign_key": True},
        {"omit_id_token": True},
        {"iss_parameter": "https://evil.example"},
    ],
    ids=["audience", "nonce", "issuer", "expired", "signature", "no-id-token", "mix-up"],
)
def test_an_answer_that_does_not_check_out_signs_no_one_in(client, stub, staff, tamper):
    for name, value in tamper.items():
        setattr(stub.behaviour, name, value)

    response = sign_in_with_sso(client, stub)

    assert response.headers["Location"] == "/login"
    assert "Signing in with Acme SSO did not work" in client.get("/login").get_data(as_text=True)
    assert signed_in_as(client) is None
    assert failures()


def test_a_callback_does_nothing_in_a_browser_that_did_not_start_it(app, client, stub, staff):
    callback = stub.authorize(start(client))
    stranger = app.test_client()

    come_back(stranger, callback)

    assert signed_in_as(stranger) is None
    assert stub.token_requests == []  # refused before the code was exchanged


def test_a_callback_works_only_once(app, client, stub, staff):
    callback = stub.authorize(start(client))
    with client.session_transaction() as session:
        flow_marker = {k: v for k, v in session.items() if k.startswith("_state_")}
    come_back(client, callback)
    assert signed_in_as(client) == STAFF_EMAIL

    replay = app.test_client()  # even with the browser's marker, the server-side state is gone
    with replay.session_transaction() as session:
        session.update(flow_marker)
    come_back(replay, callback)

    assert signed_in_as(replay) is None
    assert len(stub.token_requests) == 1


def test_a_refusal_at_the_provider_is_reported(client, stub, staff):
    params = start(client)

    response = client.get(
        f"/login/sso/acme/callback?error=access_denied&state={params['state']}"
    )

    assert response.headers["Location"] == "/login"
    assert signed_in_as(client) is None


@pytest.mark.parametrize(
    ("next", "landing"),
    [("/connections", "/connections"), ("//evil.example", "/"), ("https://evil.example", "/")],
)
def test_single_sign_on_returns_to_the_page_asked_for_if_it_is_local(
    client, stub, staff, next, landing
):
    assert sign_in_with_sso(client, stub, next=next).headers["Location"] == landing


def test_the_redirect_uri_follows_vault_base_url(app_config, stub, request):
    app_config["VAULT_BASE_URL"] = "https://vault.example.com"
    client = request.getfixturevalue("client")

    params = start(client)

    assert params["redirect_uri"] == "https://vault.example.com/login/sso/acme/callback"


def test_a_provider_that_cannot_be_reached_is_reported(sso_settings, request):
    sso_settings["server_metadata_url"] = '"http://127.0.0.1:9/.well-known/openid-configuration"'
    client = request.getfixturevalue("client")

    response = client.post("/login/sso/acme", data={"csrf_token": csrf_token(client)})

    assert response.headers["Location"] == "/login"
    assert "Acme SSO cannot be reached" in client.get("/login").get_data(as_text=True)


def test_only_staff_login_providers_can_sign_in(client, stub):
    token = csrf_token(client)

    assert client.post("/login/sso/voicenter", data={"csrf_token": token}).status_code == 404
    assert client.post("/login/sso/nobody", data={"csrf_token": token}).status_code == 404
    assert client.get("/login/sso/voicenter/callback?code=x&state=y").status_code == 404
