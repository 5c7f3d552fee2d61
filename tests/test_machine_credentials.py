"""Machine credentials: the providers file's keys, the jwt_bearer grant of any oauth2 provider,
credential kinds, renewability in Python and SQL alike, and key rotation of stored key files.

Service accounts' upload and renewal are in tests/test_service_accounts.py; private_key_jwt at
a real provider in tests/e2e/test_private_key_jwt_e2e.py.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from tests.support.builders import post_form
from tests.support.google_token_stub import GOOGLE_TOKEN_URI, SCOPES, GoogleTokenStub, pem_of
from tests.support.refresh_fixtures import both_backends
from tests.support.registry import load_registry
from vault import create_app
from vault.config import ConfigError
from vault.grants import StoredValues, grant_for
from vault.grants.kinds import CredentialKind, credential_kind, describe
from vault.models import Connection, Token, TokenKind, utcnow
from vault.oauth.service_accounts import parse_key_file, stored_value
from vault.queries.connection_list import ConnectionFilters, list_connections
from vault.refresh.batch import due_statement
from vault.refresh.engine import Outcome, refresh_now
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database

ROBOT = "robot@vault-tests.iam.gserviceaccount.com"
NEW_SECRET = "a-new-encryption-secret-for-machine-credentials-0123456789"


def rsa_pem(bits: int = 2048) -> str:
    return pem_of(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


OIDC = ('[idp]\ntype = "oidc"\nserver_metadata_url = "https://idp.example/.well-known/x"\n'
        'client_id = "vault"\n')


# -- the providers file ------------------------------------------------------------------------


def test_private_key_jwt_needs_no_secret_and_reads_a_key_file(tmp_path):
    key = rsa_pem()
    path = tmp_path / "client.pem"
    path.write_text(key, encoding="utf-8")
    provider = load_registry(tmp_path, OIDC + 'token_endpoint_auth_method = "private_key_jwt"\n'
                             f'client_private_key_file = "{path}"\nclient_key_id = "k1"\n'
                             ).get("idp")
    assert provider.client_private_key == key and provider.client_secret is None
    assert provider.client_key_id == "k1"
    assert key not in repr(provider)
    from_env = load_registry(tmp_path, OIDC + 'token_endpoint_auth_method = "private_key_jwt"\n'
                             'client_private_key = "${CLIENT_KEY}"\n',
                             environ={"CLIENT_KEY": ec_pem()}).get("idp")
    assert from_env.client_private_key.startswith("-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize(("table", "expected"), [
    ('token_endpoint_auth_method = "private_key_jwt"\n',
     "[idp] client_private_key: give either client_private_key (PEM text) or "
     "client_private_key_file"),
    ('token_endpoint_auth_method = "private_key_jwt"\nclient_private_key = "${BAD}"\n',
     "[idp] client_private_key: the key is not a PEM private key"),
    ('token_endpoint_auth_method = "private_key_jwt"\nclient_private_key = "${SMALL}"\n',
     "[idp] client_private_key: the key is a 1024-bit RSA key; at least 2048 bits are needed"),
    ('token_endpoint_auth_method = "private_key_jwt"\nclient_private_key_file = "/nope.pem"\n',
     "[idp] client_private_key_file: /nope.pem cannot be read"),
    ('client_secret = "s"\nclient_private_key = "${SMALL}"\n',
     '[idp] client_private_key: only used with token_endpoint_auth_method = "private_key_jwt"'),
    ('client_secret = "s"\ngrant_type = "jwt_bearer"\n',
     "[idp] assertion_private_key: give either"),
])
def test_a_bad_key_setting_names_the_setting_and_never_the_key(tmp_path, table, expected):
    small = rsa_pem(1024)
    broken = rsa_pem().replace("\n", "\n#", 4)
    with pytest.raises(ConfigError) as refused:
        load_registry(tmp_path, OIDC + table, environ={"BAD": broken, "SMALL": small})
    assert expected in str(refused.value)
    for key in (small, broken):
        for line in key.splitlines()[1:-1]:
            assert line not in str(refused.value)


def test_a_bad_key_stops_start_up_with_one_line(app_config, providers_file):
    broken = rsa_pem().replace("\n", "\n!", 5)
    providers_file.write_text(OIDC + 'token_endpoint_auth_method = "private_key_jwt"\n'
                              f'client_private_key = """{broken}"""\n', encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        create_app(app_config)
    message = str(stopped.value.code)
    assert message.startswith("Token Vault cannot start: providers file ")
    assert "[idp] client_private_key: the key is not a PEM private key" in message
    assert "\n" not in message and "PRIVATE KEY" not in message


def test_the_service_account_preset_and_its_checks(tmp_path):
    provider = load_registry(tmp_path, '[sa]\npreset = "google_service_account"\n'
                             f'scope = "{SCOPES[0]}"\n').get("sa")
    assert (provider.type, provider.token_url) == ("service_account", GOOGLE_TOKEN_URI)
    assert provider.uses_jwt_bearer and not provider.is_oauth
    for table, expected in (
        ('[sa]\npreset = "google_service_account"\n', "[sa] scope: missing"),
        (f'[sa]\npreset = "google_service_account"\nscope = "{SCOPES[0]}"\nclient_secret = "x"\n',
         "[sa] client_secret: not used by a service account"),
        ('[m]\ntype = "oidc"\nserver_metadata_url = "https://i.example/x"\nclient_id = "c"\n'
         'grant_type = "jwt_bearer"\nassertion_private_key = "${K}"\n',
         '[m] grant_type: jwt_bearer is for plain OAuth 2.0 providers'),
    ):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_registry(tmp_path, table, environ={"K": rsa_pem()})


# -- credential kinds --------------------------------------------------------------------------


def test_one_function_names_every_credential_kind(tmp_path):
    registry = load_registry(tmp_path, OIDC + 'client_secret = "s"\n\n'
                             '[cc]\ntype = "oauth2"\nclient_id = "c"\nclient_secret = "s"\n'
                             'token_url = "https://t.example/token"\n'
                             'grant_type = "client_credentials"\n\n'
                             '[jb]\ntype = "oauth2"\nclient_id = "c"\n'
                             'token_url = "https://t.example/token"\ngrant_type = "jwt_bearer"\n'
                             'assertion_private_key = "${K}"\nassertion_key_id = "k9"\n\n'
                             f'[sa]\npreset = "google_service_account"\nscope = "{SCOPES[0]}"\n\n'
                             '[vc]\npreset = "voicenter"\n\n'
                             '[dev]\ntype = "oauth2"\nclient_id = "c"\nclient_secret = "s"\n'
                             'token_url = "https://t.example/token"\nflow = "device"\n'
                             'device_authorization_url = "https://t.example/device"\n',
                             environ={"K": rsa_pem()})
    keys = ("idp", "cc", "jb", "sa", "vc", "dev")
    kinds = {key: credential_kind(registry.get(key)) for key in keys}
    assert kinds == {
        "idp": CredentialKind.PERSON, "cc": CredentialKind.CLIENT_CREDENTIALS,
        "jb": CredentialKind.SERVICE_ACCOUNT, "sa": CredentialKind.SERVICE_ACCOUNT,
        "vc": CredentialKind.API_KEY, "dev": CredentialKind.DEVICE,
    }
    assert credential_kind(None) is CredentialKind.UNKNOWN
    now = utcnow()
    described = describe(registry.get("sa"), "abc", now - timedelta(days=3, hours=1))
    assert (described.label, described.key_id, described.key_age_days(now)) == (
        "Service account", "abc", 3)
    assert describe(registry.get("idp"), "abc", now).key_id is None


# -- renewability: Python and SQL agree ---------------------------------------------------------


@pytest.fixture
def google():
    with GoogleTokenStub(expires_in=30) as stub:
        yield stub


@pytest.fixture
def rfc7523():
    """The same endpoint as RFC 7523 has it: scopes as a request parameter."""
    with GoogleTokenStub(expires_in=30, scope_as_parameter=True) as stub:
        yield stub


@pytest.fixture
def assertion_key(rfc7523):
    key = rfc7523.create_key(ROBOT)
    return key


@pytest.fixture
def app_config(app_config, providers_file, google, rfc7523, assertion_key):
    providers_file.write_text(
        f'[sa]\npreset = "google_service_account"\ntoken_url = "{google.token_url}"\n'
        f'scope = "{" ".join(SCOPES)}"\n\n'
        f'[jb]\ntitle = "Assertions"\ntype = "oauth2"\nclient_id = "vault"\n'
        f'token_url = "{rfc7523.token_url}"\ngrant_type = "jwt_bearer"\nscope = "{SCOPES[1]}"\n'
        'assertion_private_key = """' + assertion_key["private_key"] + '"""\n'
        f'assertion_key_id = "{assertion_key["private_key_id"]}"\n'
        f'assertion_issuer = "{ROBOT}"\nassertion_subject = "boss@example.com"\n'
        f'assertion_audience = "{GOOGLE_TOKEN_URI}"\n',
        encoding="utf-8",
    )
    rfc7523.accounts[ROBOT].delegates.add("boss@example.com")
    return app_config


def service_account(db, google, *, status="active", with_key=True, expires_in=-60) -> Connection:
    key_file = google.create_key(ROBOT)
    connection = Connection(provider="sa", account_subject=f"{ROBOT}-{status}-{with_key}",
                            status=status, scopes_requested=SCOPES[0],
                            credential_key_id=key_file["private_key_id"])
    db.session.add(connection)
    db.session.flush()
    if with_key:
        key = parse_key_file(json.dumps(key_file).encode())
        token_vault.store(connection, TokenKind.PRIVATE_KEY, stored_value(key, None))
    token_vault.store(connection, TokenKind.ACCESS, "ya29.old",
                      expires_at=utcnow() + timedelta(seconds=expires_in))
    db.session.commit()
    return connection


@both_backends
def test_python_and_sql_agree_on_service_accounts(app, db, google):
    cases = {
        "with key": service_account(db, google),
        "no key": service_account(db, google, with_key=False),
        "needs reconnect": service_account(db, google, status="needs_reconnect"),
        "disconnected": service_account(db, google, status="disconnected"),
    }
    expected = {"with key": True, "no key": False, "needs reconnect": False,
                "disconnected": False}
    providers = app.extensions["providers"]
    python = {name: grant_for(c.provider, providers.get(c.provider), c.status,
                              StoredValues.of(c.tokens), utcnow()).renewable
              for name, c in cases.items()}
    rows = {row.id: row for row in list_connections(ConnectionFilters(), utcnow(), size=50).items}
    claimed = {c.id for c in db.session.scalars(due_statement(timedelta(days=1)))}
    assert python == expected
    assert {name: bool(rows[c.id].renewable) for name, c in cases.items()} == expected
    assert {name: c.id in claimed for name, c in cases.items()} == expected


# -- the jwt_bearer grant of any oauth2 provider ------------------------------------------------


@both_backends
def test_an_oauth2_provider_with_the_jwt_bearer_grant_connects_and_renews(
    app, db, rfc7523, assertion_key, admin_client
):
    response = post_form(admin_client, "/connect/jb")
    assert response.status_code == 302, response.get_data(as_text=True)
    connection = db.session.scalars(select(Connection).where(Connection.provider == "jb")).one()
    assert connection.account_subject == "boss@example.com"
    assert connection.credential_key_id == assertion_key["private_key_id"]
    assert refresh_now(connection, "cli").outcome is Outcome.REFRESHED
    claims = [claims for claims, _ in rfc7523.accepted]
    assert len(claims) == 2
    for one in claims:
        assert (one["iss"], one["sub"], one["aud"], one["scope"]) == (
            ROBOT, "boss@example.com", GOOGLE_TOKEN_URI, SCOPES[1])
    connection = db.session.get(Connection, connection.id)
    assert token_vault.get(connection, TokenKind.ACCESS) == rfc7523.accepted[-1][1]
    page = admin_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    assert "Service account" in page and assertion_key["private_key_id"] in page


# -- rotate-key and verify cover stored key files -----------------------------------------------


@both_backends
def test_rotate_key_and_verify_cover_key_files_and_renewal_still_signs(
    app, db, google, make_app
):
    connection = service_account(db, google)
    connection_id = connection.id
    before = token_vault.get(connection, TokenKind.PRIVATE_KEY)
    rotated = make_app(ENCRYPTION_SECRET=NEW_SECRET,
                       ENCRYPTION_SECRET_PREVIOUS=app.config["ENCRYPTION_SECRET"])
    with rotated.app_context():
        runner = rotated.test_cli_runner()
        result = runner.invoke(args=["vault", "rotate-key"])
        assert result.exit_code == 0, result.output
        current = token_vault.cipher.current_key_id
        row = db.session.scalars(select(Token).where(
            Token.connection_id == connection_id,
            Token.kind == TokenKind.PRIVATE_KEY.value)).one()
        assert row.key_id == current
        verified = runner.invoke(args=["vault", "verify"])
        assert verified.exit_code == 0, verified.output
    alone = make_app(ENCRYPTION_SECRET=NEW_SECRET, ENCRYPTION_SECRET_PREVIOUS="")
    with alone.app_context():
        connection = db.session.get(Connection, connection_id)
        assert token_vault.get(connection, TokenKind.PRIVATE_KEY) == before
        assert refresh_now(connection, "cli").outcome is Outcome.REFRESHED
    assert google.accepted[-1][0]["iss"] == ROBOT

