"""Connect flows over real HTTP against a strict OIDC stand-in on loopback."""

from __future__ import annotations

import base64
import re
import zlib

import pytest
from sqlalchemy import func, select

from tests.support.connect_flow import (
    ADMIN_EMAIL,
    VIEWER_EMAIL,
    begin,
    csrf_token,
    finish,
    sign_in,
)
from tests.support.oidc_stub import OIDCStub
from vault.models import AuditEvent, Connection, ConnectionStatus, Token
from vault.tokens.store import token_vault


@pytest.fixture
def stub():
    with OIDCStub() as running:
        yield running


@pytest.fixture
def provider_settings(stub):
    """The [stub] table of the providers file; tests may change it before `app`."""
    return {
        "title": "Stub IdP",
        "type": "oidc",
        "server_metadata_url": stub.discovery_url,
        "client_id": stub.client_id,
        "client_secret": stub.client_secret,
        "scope": "openid email profile offline_access",
        "offline_access": True,
    }


def toml_table(name: str, settings: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'{k} = "{x}"' for k, x in v.items()) + " }"
        return f'"{v}"'
    return f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in settings.items())


@pytest.fixture
def app_config(app_config, providers_file, provider_settings):
    providers_file.write_text(
        toml_table("stub", provider_settings)
        + '\n[voicenter]\npreset = "voicenter"\n\n[whatsapp]\npreset = "whatsapp"\n'
    )
    return app_config


@pytest.fixture
def admin_client(client, users):
    """``client`` itself, signed in as the admin of ``users`` (not the conftest's admin_client)."""
    sign_in(client, ADMIN_EMAIL)
    return client


@pytest.fixture
def viewer_client(app, users):
    other = app.test_client()
    sign_in(other, VIEWER_EMAIL)
    return other


def connect(client, stub, provider="stub"):
    return finish(client, stub.authorize(begin(client, provider)))


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def assert_nothing_stored(db):
    db.session.expire_all()
    assert count(db, Connection) == 0
    assert count(db, Token) == 0


# -- the happy path -------------------------------------------------------------------------


def test_connect_stores_encrypted_tokens_and_lands_on_the_connection(admin_client, stub, db):
    params = begin(admin_client)
    assert params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["state"] and params["nonce"]
    assert params["redirect_uri"] == "http://localhost/connect/stub/callback"
    assert params["client_id"] == stub.client_id

    response = finish(admin_client, stub.authorize(params))
    assert response.status_code == 302
    connection = db.session.scalars(select(Connection)).one()
    assert response.headers["Location"] == f"/connections/{connection.id}"
    assert (connection.account_email, connection.account_name) == ("ops@example.com", "Ops Account")
    assert connection.account_subject == stub.behaviour.account["sub"]
    assert connection.status == ConnectionStatus.ACTIVE.value
    assert connection.created_by.email == ADMIN_EMAIL
    assert connection.scopes_granted == "openid email profile offline_access"
    issued = stub.issued[-1]
    assert token_vault.get(connection, "access") == issued["access_token"]
    assert token_vault.get(connection, "refresh") == issued["refresh_token"]
    assert token_vault.get(connection, "id") == issued["id_token"]
    access = token_vault.token(connection, "access")
    assert 3500 < (access.expires_at - connection.created_at).total_seconds() < 3700
    assert stub.token_requests[-1]["auth_method"] == "client_secret_basic"
    assert db.session.scalar(select(AuditEvent.action).where(AuditEvent.connection_id == connection.id)) == "connection.created"

    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "ops@example.com" in page and "Connected ops@example.com" in page
    assert issued["access_token"] not in page and issued["refresh_token"] not in page
    assert issued["access_token"][-4:] in page


def test_flow_state_stays_off_the_session_cookie(admin_client, stub):
    params = begin(admin_client)
    cookie = admin_client.get_cookie("__Host-session") or admin_client.get_cookie("session")
    payload = cookie.value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    decoded = zlib.decompress(raw) if cookie.value.startswith(".") else raw
    assert params["nonce"].encode() not in decoded
    assert b"code_verifier" not in decoded



@pytest.fixture
def post_auth(provider_settings):
    provider_settings["token_endpoint_auth_method"] = "client_secret_post"


def test_token_endpoint_auth_method_client_secret_post(post_auth, admin_client, stub, db):
    connect(admin_client, stub)
    assert stub.token_requests[-1]["auth_method"] == "client_secret_post"
    assert count(db, Connection) == 1


def test_reconnecting_the_same_account_replaces_tokens_without_duplicating(admin_client, stub, db):
    connect(admin_client, stub)
    first = stub.issued[-1]
    connect(admin_client, stub)
    second = stub.issued[-1]
    connection = db.session.scalars(select(Connection)).one()
    assert token_vault.get(connection, "access") == second["access_token"] != first["access_token"]
    assert count(db, Token) == 3


def test_a_reconnect_without_a_new_refresh_token_keeps_a_good_one(admin_client, stub, db):
    connect(admin_client, stub)
    kept = stub.issued[-1]["refresh_token"]
    stub.behaviour.omit_refresh_token = True
    connect(admin_client, stub)
    connection = db.session.scalars(select(Connection)).one()
    assert token_vault.get(connection, "refresh") == kept


def test_a_reconnect_drops_a_refused_refresh_token_and_says_so(admin_client, stub, db):
    connect(admin_client, stub)
    connection = db.session.scalars(select(Connection)).one()
    token_vault.mark_invalid(connection, "invalid_grant: revoked")  # a refused refresh
    db.session.commit()
    stub.behaviour.omit_refresh_token = True
    response = connect(admin_client, stub)
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    db.session.expire_all()
    assert token_vault.token(connection, "refresh") is None
    # Not "the provider refused the refresh token; connect again": that was just done.
    assert "No refresh token — reconnect with consent" in page
    assert "the provider refused the refresh token" not in page


def test_no_refresh_token_is_saved_but_flagged(admin_client, stub, db):
    stub.behaviour.omit_refresh_token = True
    response = connect(admin_client, stub)
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert count(db, Connection) == 1
    assert "No refresh token — reconnect with consent" in page


def test_fewer_scopes_granted_are_stored_and_warned_about(admin_client, stub, db):
    stub.behaviour.granted_scope = "openid email"
    response = connect(admin_client, stub)
    connection = db.session.scalars(select(Connection)).one()
    assert connection.scopes_granted == "openid email"
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "fewer scopes than asked" in page and "offline_access" in page


def test_missing_expires_in_means_expiry_unknown(admin_client, stub, db):
    stub.behaviour.omit_expires_in = True
    connect(admin_client, stub)
    connection = db.session.scalars(select(Connection)).one()
    assert token_vault.token(connection, "access").expires_at is None


def test_provider_supplied_names_are_shown_as_text(admin_client, stub, db):
    stub.behaviour.account["name"] = "<img src=x onerror=alert(1)>"
    response = connect(admin_client, stub)
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


# -- failure paths: a clear page and nothing stored ------------------------------------------


def callback(client, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.get(f"/connect/stub/callback?{query}")


def test_access_denied_shows_the_escaped_description(admin_client, stub, db):
    params = begin(admin_client)
    response = callback(admin_client, error="access_denied", state=params["state"],
                        error_description="%3Cscript%3Ealert(1)%3C/script%3E+said+no")
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "access_denied" in page and "&lt;script&gt;alert(1)&lt;/script&gt; said no" in page
    assert "<script>alert(1)" not in page
    assert_nothing_stored(db)
    # The state is spent: the same flow cannot be finished afterwards.
    assert finish(admin_client, stub.authorize(params)).status_code == 400
    assert_nothing_stored(db)


@pytest.mark.parametrize("case", ["missing", "foreign", "reused"])
def test_bad_state_is_refused(case, admin_client, stub, db, app):
    params = begin(admin_client)
    url = stub.authorize(params)
    if case == "missing":
        url = re.sub(r"state=[^&]+&?", "", url)
    elif case == "foreign":
        stranger = app.test_client()
        sign_in(stranger, ADMIN_EMAIL)
        assert finish(stranger, url).status_code == 400
        assert_nothing_stored(db)
        return
    else:
        assert finish(admin_client, url).status_code == 302
        db.session.execute(Token.__table__.delete())
        db.session.execute(Connection.__table__.delete())
        db.session.commit()
        url = stub.authorize(params)  # a fresh code, the same (spent) state
    response = finish(admin_client, url)
    assert response.status_code == 400
    assert_nothing_stored(db)


def test_missing_code_is_refused(admin_client, stub, db):
    params = begin(admin_client)
    response = callback(admin_client, state=params["state"], iss=stub.issuer)
    assert response.status_code == 400 and "no authorization code" in response.get_data(as_text=True)
    assert_nothing_stored(db)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (400, '{"error": "invalid_grant", "error_description": "Bad Request"}', "application/json", "invalid_grant"),
        (500, "<html>Internal Server Error</html>", "text/html", "answered HTTP 500"),
        (200, "not json at all", "text/plain", "could not be verified"),
        (200, '{"token_type": "Bearer"}', "application/json", "without an access token"),
    ],
)
def test_token_endpoint_failures_store_nothing(admin_client, stub, db, status, body, content_type, expected):
    stub.behaviour.token_status, stub.behaviour.token_body = status, body
    stub.behaviour.token_content_type = content_type
    response = connect(admin_client, stub)
    assert response.status_code in (400, 502)
    assert expected in response.get_data(as_text=True)
    assert_nothing_stored(db)


@pytest.mark.parametrize(
    "tamper",
    [
        {"sign_with_foreign_key": True},
        {"id_token_claims": {"nonce": "not-the-nonce"}},
        {"id_token_claims": {"aud": "someone-else"}},
        {"id_token_claims": {"iss": "https://evil.example"}},
        {"id_token_claims": {"exp": 1_000_000}},
        {"omit_id_token": True},
    ],
    ids=["signature", "nonce", "audience", "issuer", "expired", "missing"],
)
def test_invalid_id_token_stores_nothing(admin_client, stub, db, tamper):
    for name, value in tamper.items():
        setattr(stub.behaviour, name, value)
    response = connect(admin_client, stub)
    assert response.status_code == 400
    assert_nothing_stored(db)


def test_iss_mismatch_is_refused_before_any_exchange(admin_client, stub, db):
    stub.behaviour.iss_parameter = "https://evil.example"
    requests_before = len(stub.token_requests)
    response = connect(admin_client, stub)
    assert response.status_code == 400 and "issuer mismatch" in response.get_data(as_text=True)
    assert len(stub.token_requests) == requests_before
    assert_nothing_stored(db)


def test_missing_iss_is_refused_when_the_provider_advertises_it(admin_client, stub, db):
    url = re.sub(r"&?iss=[^&]+", "", stub.authorize(begin(admin_client)))
    assert finish(admin_client, url).status_code == 400
    assert_nothing_stored(db)


def test_unknown_provider_is_404(admin_client, db):
    assert admin_client.post("/connect/nope", data={"csrf_token": csrf_token(admin_client, "/")}).status_code == 404
    assert admin_client.get("/connect/nope/callback?code=x&state=y").status_code == 404


def test_viewer_cannot_start_a_connect(viewer_client, stub, db):
    response = viewer_client.post("/connect/stub", data={"csrf_token": csrf_token(viewer_client, "/")})
    assert response.status_code == 403
    assert stub.authorize_requests == []


def test_connect_without_csrf_token_is_refused(admin_client, stub):
    assert admin_client.post("/connect/stub").status_code in (400, 403)


# -- disconnect ------------------------------------------------------------------------------


def test_disconnect_revokes_refresh_token_first_then_deletes(admin_client, stub, db):
    response = connect(admin_client, stub)
    connection_id = int(response.headers["Location"].rsplit("/", 1)[1])
    issued = stub.issued[-1]
    confirm = admin_client.get(f"/connections/{connection_id}/disconnect")
    assert confirm.status_code == 200 and "Disconnect" in confirm.get_data(as_text=True)
    assert stub.revocations == []
    done = admin_client.post(f"/connections/{connection_id}/disconnect",
                             data={"csrf_token": csrf_token(admin_client, "/")}, follow_redirects=True)
    assert "access revoked at the provider" in done.get_data(as_text=True)
    assert [r["token_type_hint"] for r in stub.revocations] == ["refresh_token", "access_token"]
    assert stub.revocations[0]["token"] == issued["refresh_token"]
    db.session.expire_all()
    connection = db.session.get(Connection, connection_id)
    assert connection.status == "disconnected" and count(db, Token) == 0
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "connection.disconnected"))


def test_disconnect_deletes_locally_even_when_revocation_fails(admin_client, stub, db):
    response = connect(admin_client, stub)
    connection_id = int(response.headers["Location"].rsplit("/", 1)[1])
    stub.behaviour.revocation_status = 503
    done = admin_client.post(f"/connections/{connection_id}/disconnect",
                             data={"csrf_token": csrf_token(admin_client, "/")}, follow_redirects=True)
    assert "revocation failed" in done.get_data(as_text=True)
    assert count(db, Token) == 0


def test_viewer_cannot_disconnect(admin_client, viewer_client, stub, db):
    response = connect(admin_client, stub)
    connection_id = int(response.headers["Location"].rsplit("/", 1)[1])
    denied = viewer_client.post(f"/connections/{connection_id}/disconnect",
                                data={"csrf_token": csrf_token(viewer_client, "/")})
    assert denied.status_code == 403
    assert stub.revocations == [] and count(db, Token) == 3


# -- API-key providers --------------------------------------------------------------------------


def test_api_credentials_are_encrypted_and_only_last_four_shown(admin_client, db):
    secret = "vc-0123456789-abcdefghij-WXYZ"
    form = admin_client.get("/connect/voicenter/credentials").get_data(as_text=True)
    assert 'for="label"' in form and "API token" in form
    response = admin_client.post("/connect/voicenter/credentials", data={
        "label": "Main account", "api_key": secret, "csrf_token": csrf_token(admin_client, "/")})
    assert response.status_code == 302
    connection = db.session.scalars(select(Connection)).one()
    assert token_vault.get(connection, "api_key") == secret
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert secret not in page and "WXYZ" in page and "••••WXYZ" in page

    replaced = admin_client.post(f"/connections/{connection.id}/credentials", data={
        "api_key": "vc-new-token-value-9876", "csrf_token": csrf_token(admin_client, "/")})
    assert replaced.status_code == 302
    assert token_vault.get(connection, "api_key") == "vc-new-token-value-9876"
    actions = db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert "credentials.added" in actions and "credentials.replaced" in actions


def test_whatsapp_token_keeps_its_optional_expiry(admin_client, db):
    response = admin_client.post("/connect/whatsapp/credentials", data={
        "label": "Support line", "api_key": "EAAG-system-user-token-1234",
        "expires_on": "2027-01-31", "csrf_token": csrf_token(admin_client, "/")})
    assert response.status_code == 302
    connection = db.session.scalars(select(Connection)).one()
    assert token_vault.token(connection, "api_key").expires_at.isoformat() == "2027-01-31T00:00:00+00:00"


def test_an_account_name_with_a_bidi_override_is_refused(admin_client, db):
    data = {"label": "Main \u202eenil", "api_key": "vc-0123456789-abcdef-WXYZ",
            "csrf_token": csrf_token(admin_client, "/")}
    response = admin_client.post("/connect/voicenter/credentials", data=data)
    assert response.status_code == 400
    assert "control or formatting characters" in response.get_data(as_text=True)
    assert count(db, Connection) == 0


def test_duplicate_credentials_name_is_refused_cleanly(admin_client, db):
    data = {"label": "Main", "api_key": "first-token-abcdef", "csrf_token": csrf_token(admin_client, "/")}
    assert admin_client.post("/connect/voicenter/credentials", data=data).status_code == 302
    again = admin_client.post("/connect/voicenter/credentials", data=data | {"api_key": "second-token-xyz"})
    assert again.status_code == 400 and "already has credentials" in again.get_data(as_text=True)
    assert count(db, Connection) == 1


def test_viewer_cannot_add_credentials(viewer_client, db):
    response = viewer_client.post("/connect/voicenter/credentials", data={
        "label": "x", "api_key": "y" * 20, "csrf_token": csrf_token(viewer_client, "/")})
    assert response.status_code == 403
    assert_nothing_stored(db)


# -- GreenInvoice: API key id and secret exchanged for a short-lived JWT ----------------------


@pytest.fixture
def greeninvoice(app_config, providers_file):
    from tests.support.provider_stub import ProviderStub

    with ProviderStub() as stub:
        with providers_file.open("a") as handle:
            handle.write(f'\n[greeninvoice]\npreset = "greeninvoice"\ntoken_url = "{stub.greeninvoice_url}"\n')
        yield stub


def test_greeninvoice_credentials_are_exchanged_for_a_jwt(greeninvoice, admin_client, db):
    key_id, key_secret = greeninvoice.issue_api_key()
    response = admin_client.post("/connect/greeninvoice/credentials", data={
        "label": "Books", "api_key": key_id, "api_secret": key_secret,
        "csrf_token": csrf_token(admin_client, "/")})
    assert response.status_code == 302, response.get_data(as_text=True)
    connection = db.session.scalars(select(Connection)).one()
    assert token_vault.get(connection, "api_key") == key_id
    assert token_vault.get(connection, "api_secret") == key_secret
    assert token_vault.get(connection, "access") == greeninvoice.issued_access_tokens[-1]
    assert token_vault.token(connection, "access").expires_at is not None


def test_greeninvoice_refusing_the_credentials_stores_nothing(greeninvoice, admin_client, db):
    response = admin_client.post("/connect/greeninvoice/credentials", data={
        "label": "Books", "api_key": "gi-id-wrong", "api_secret": "not-the-secret-value",
        "csrf_token": csrf_token(admin_client, "/")})
    assert response.status_code == 400
    assert "refused these credentials" in response.get_data(as_text=True)
    assert_nothing_stored(db)
