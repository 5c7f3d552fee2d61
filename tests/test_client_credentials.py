"""Client-credentials providers: connected without a browser, refreshed with the client secret."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.support.builders import post_form
from tests.support.refresh_fixtures import both_backends
from tests.support.registry import load_registry
from vault.config import ConfigError
from vault.models import AuditEvent, Connection, Token, TokenKind, utcnow
from vault.refresh.engine import refresh_now
from vault.services import service_keys
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database  # one database for the module

MACHINE = "machine"


@pytest.fixture
def machine_provider(stub_config, providers_file, stub):
    """Adds to the stub's providers one that uses the client-credentials grant."""
    table = stub.providers_toml(MACHINE, grant_type="client_credentials", scope="reports.read")
    # Such a provider needs no authorization endpoint: no browser is ever sent there.
    table = "\n".join(line for line in table.splitlines() if not line.startswith("authorize_url"))
    providers_file.write_text(providers_file.read_text() + table + "\n", encoding="utf-8")


@pytest.fixture
def vault_app(machine_provider, app):
    """The app, its providers file written before it starts; the test runs in its context."""
    return app


def connect(admin_client):
    return post_form(admin_client, f"/connect/{MACHINE}")


def machine_connection(db) -> Connection:
    return db.session.scalar(select(Connection).where(Connection.provider == MACHINE))


def expire_access_token(db, connection_id: int, seconds: int = 60) -> None:
    db.session.execute(
        update(Token)
        .where(Token.connection_id == connection_id, Token.kind == TokenKind.ACCESS.value)
        .values(expires_at=utcnow() + timedelta(seconds=seconds))
    )
    db.session.commit()


def test_the_providers_file_checks_the_grant_type(tmp_path):
    base = '[m]\ntype = "oauth2"\nclient_id = "x"\nclient_secret = "y"\ntoken_url = "https://t/x"\n'
    machine = load_registry(tmp_path, base + 'grant_type = "client_credentials"\n').get("m")
    assert machine.uses_client_credentials and machine.authorize_url is None
    for text, expected in (
        (base + 'grant_type = "password"\n', "[m] grant_type: must be one of"),
        (base, "[m] authorize_url: missing"),
        ('[k]\npreset = "voicenter"\ngrant_type = "client_credentials"\n',
         "[k] grant_type: client_credentials is for OAuth providers"),
    ):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_registry(tmp_path, text)


@both_backends
def test_connect_fetches_a_token_with_the_client_secret(vault_app, db, stub, admin_client):
    response = connect(admin_client)

    connection = machine_connection(db)
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/connections/{connection.id}")
    request = stub.requests[-1]["form"]
    assert request["grant_type"] == "client_credentials" and request["scope"] == "reports.read"
    assert token_vault.get(connection, TokenKind.ACCESS) == stub.issued_access_tokens[-1]
    assert token_vault.token(connection, TokenKind.REFRESH) is None
    assert (connection.account_subject, connection.status) == (stub.client_id, "active")
    assert token_vault.token(connection, TokenKind.ACCESS).expires_at is not None
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.connection_id == connection.id))
    assert event.action == "connection.created"

    page = admin_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    assert "Refresh now" in page and "No refresh token" not in page
    assert stub.issued_access_tokens[-1] not in page

    connect(admin_client)  # connecting again replaces the token of the same connection
    assert db.session.scalar(select(Connection.id).where(Connection.provider == MACHINE)) == (
        connection.id
    )
    db.session.expire_all()
    assert token_vault.get(connection, TokenKind.ACCESS) == stub.issued_access_tokens[-1]
    assert len(stub.issued_access_tokens) == 2


@both_backends
def test_a_refused_client_stores_nothing_and_the_page_says_why(vault_app, db, stub, admin_client):
    # Some token endpoints echo what they were sent; the secret must not reach the page.
    echo = f"client_secret {stub.client_secret} is not valid"
    stub.fail_next(401, {"error": "invalid_client", "error_description": echo})
    response = connect(admin_client)
    page = response.get_data(as_text=True)
    assert response.status_code == 502
    assert "refused the client credentials (invalid_client" in page
    assert "check the client id and secret in the providers file" in page
    assert stub.client_secret not in page
    assert machine_connection(db) is None
    assert db.session.scalar(select(Token.id)) is None

    stub.fail_next(503, {"error": "temporarily_unavailable"})
    assert "could not be asked for a token" in connect(admin_client).get_data(as_text=True)
    assert machine_connection(db) is None


@both_backends
def test_a_refused_client_secret_needs_a_person_not_retries(vault_app, db, stub, admin_client):
    connect(admin_client)
    connection = machine_connection(db)
    stub.fail_next(401, {"error": "invalid_client", "error_description": "secret expired"})

    result = refresh_now(connection, "system")

    assert result.outcome.value == "needs_reconnect" and "invalid_client" in result.message
    db.session.expire_all()
    assert db.session.get(Connection, connection.id).status == "needs_reconnect"


def test_there_is_no_callback_for_client_credentials(vault_app, admin_client):
    assert admin_client.get(f"/connect/{MACHINE}/callback?code=x&state=y").status_code == 404


@both_backends
def test_refresh_due_renews_it_with_the_client_secret(vault_app, db, stub, admin_client, runner):
    connect(admin_client)
    connection_id = machine_connection(db).id
    expire_access_token(db, connection_id)

    result = runner.invoke(args=["vault", "refresh-due", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["refreshed"] == 1
    assert [r["form"]["grant_type"] for r in stub.requests] == ["client_credentials"] * 2
    db.session.expire_all()
    assert token_vault.get(db.session.get(Connection, connection_id), TokenKind.ACCESS) == (
        stub.issued_access_tokens[-1]
    )


@both_backends
def test_the_api_hands_out_a_renewed_token(vault_app, db, stub, admin_client, client):
    connect(admin_client)
    connection_id = machine_connection(db).id
    expire_access_token(db, connection_id, seconds=-5)  # expired: dashboard says refreshable
    refreshable = admin_client.get("/connections?status=refreshable").get_data(as_text=True)
    assert f"/connections/{connection_id}\"" in refreshable
    _, key = service_keys.create_key("reports", [MACHINE], {MACHINE})
    db.session.commit()

    response = client.get(
        f"/api/v1/connections/{connection_id}/access-token",
        headers={"Authorization": f"Bearer {key}"},
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["access_token"] == stub.issued_access_tokens[-1]
    assert len(stub.issued_access_tokens) == 2
