"""The token API (/api/v1) with service keys."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.support.refresh_fixtures import (
    OLD_ACCESS_TOKEN,
    both_backends,
    load,
    make_api_key_connection,
    make_connection,
    postgresql_only,
)
from vault.extensions import db as _db
from vault.models import AuditEvent, Connection, ServiceKey, Token, TokenKind, utcnow
from vault.refresh import rows as refresh_rows
from vault.services import service_keys
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database  # one database for the module


def new_key(db, name="billing", providers=("acme", "down", "greeninvoice")) -> str:
    _, key = service_keys.create_key(name, list(providers), set(providers) | {"voicenter"})
    db.session.commit()
    return key


@pytest.fixture
def key(vault_app, db) -> str:
    return new_key(db)


def get(client, path, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.get(f"/api/v1{path}", headers=headers)


def assert_json_error(response, status, error):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json and response.json["error"] == error
    assert response.headers["Cache-Control"] == "no-store"


@both_backends
def test_a_service_key_is_required(vault_app, db, client, key):
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer tvk_x"},
                    {"Authorization": key}):
        response = client.get("/api/v1/connections", headers=headers)
        assert_json_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    runner = vault_app.test_cli_runner()
    assert runner.invoke(args=["service-keys", "revoke", "billing"]).exit_code == 0
    assert_json_error(get(client, "/connections", key), 401, "unauthorized")


@postgresql_only
def test_openapi_document_is_public(vault_app, client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.json["openapi"].startswith("3.")
    paths = {"/connections", "/connections/{connection_id}/access-token"}
    assert set(response.json["paths"]) == paths


@both_backends
def test_list_connections_without_secrets_filtered_by_key(vault_app, db, client, stub, key):
    acme = make_connection(stub, subject="acme-account", expires_in=600)
    make_connection(stub, provider="voicenter", subject="calls")
    response = get(client, "/connections", key)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    [listed] = response.json["connections"]
    assert listed["id"] == acme and listed["provider"] == "acme" and listed["status"] == "active"
    assert listed["expires_at"].endswith("Z")
    assert OLD_ACCESS_TOKEN not in response.get_data(as_text=True)
    assert "rt-" not in response.get_data(as_text=True)
    assert get(client, "/connections?provider=acme", key).json["connections"][0]["id"] == acme
    assert get(client, "/connections?provider=down", key).json["connections"] == []
    assert_json_error(get(client, "/connections?provider=voicenter", key), 403, "forbidden")
    assert_json_error(get(client, "/connections?provider=Bad%00", key), 400, "invalid_provider")
    assert_json_error(get(client, "/connections?provder=acme", key), 400, "unknown_parameter")
    everything = new_key(db, "ops", providers=())
    assert len(get(client, "/connections", everything).json["connections"]) == 2


@both_backends
def test_fresh_access_token_is_handed_out_and_audited(vault_app, db, client, stub, key):
    connection_id = make_connection(stub, expires_in=3600)
    response = get(client, f"/connections/{connection_id}/access-token", key)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body["access_token"] == OLD_ACCESS_TOKEN and body["token_type"] == "Bearer"
    assert body["expires_at"].endswith("Z") and stub.count() == 0
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "token.handed_out"))
    assert (event.actor, event.connection_id) == ("service:billing", connection_id)
    assert event.outcome == "success"
    assert db.session.scalar(select(ServiceKey.last_used_at)) is not None


@both_backends
def test_expiring_token_is_refreshed_first(vault_app, db, client, stub, key):
    connection_id = make_connection(stub, expires_in=120)
    body = get(client, f"/connections/{connection_id}/access-token", key).json
    assert body["access_token"] == stub.issued_access_tokens[0]
    assert stub.count() == 1


def in_autocommit() -> bool:
    """Whether the session's database connection commits every statement by itself."""
    driver = _db.session.connection().connection.driver_connection
    if hasattr(driver, "autocommit"):  # psycopg
        return driver.autocommit
    return driver.isolation_level is None  # sqlite3 before Python 3.12


@both_backends
def test_a_refresh_through_the_api_locks_in_a_transaction(vault_app, db, client, stub, key,
                                                          monkeypatch):
    # A fresh token is read and audited in autocommit; a refresh must leave that connection,
    # or its row lock would end with the SELECT ... FOR NO KEY UPDATE that took it.
    autocommit_when_locking = []
    lock_row = refresh_rows.lock_row

    def spying_lock_row(*args, **kwargs):
        autocommit_when_locking.append(in_autocommit())
        return lock_row(*args, **kwargs)

    monkeypatch.setattr(refresh_rows, "lock_row", spying_lock_row)
    # Used a moment ago: authenticating the key writes nothing, whose commit would also
    # end the autocommit connection and hide a refresh that forgot to.
    db.session.execute(update(ServiceKey).values(last_used_at=utcnow()))
    db.session.commit()
    fresh = make_connection(stub, expires_in=3600)
    expiring = make_connection(stub, subject="account-2", expires_in=120)
    assert get(client, f"/connections/{fresh}/access-token", key).status_code == 200
    assert autocommit_when_locking == []
    assert get(client, f"/connections/{expiring}/access-token", key).status_code == 200
    assert autocommit_when_locking == [False]
    assert stub.count() == 1
    handed_out = db.session.scalars(
        select(AuditEvent.connection_id).where(AuditEvent.action == "token.handed_out")
    )
    assert sorted(handed_out) == sorted([fresh, expiring])


@postgresql_only
def test_a_fresh_token_is_handed_out_while_a_refresh_holds_the_connection(vault_app, db, client,
                                                                          stub, key):
    # A refresh keeps the connection's row locked while it waits for the provider (seconds,
    # at worst its timeout); hand-outs of the still-valid token must not queue behind it.
    connection_id = make_connection(stub, expires_in=3600)
    answers = []
    path = f"/connections/{connection_id}/access-token"
    worker = threading.Thread(target=lambda: answers.append(get(client, path, key).status_code))
    with vault_app.app_context():  # a session of its own, as another worker's refresh has
        assert refresh_rows.lock_row(connection_id, timeout=5) is not None
        worker.start()
        worker.join(timeout=10)
        waited_for_the_lock = worker.is_alive()
        _db.session.rollback()  # the refresh ends
    worker.join()
    assert not waited_for_the_lock
    assert answers == [200]


@postgresql_only
def test_expiry_unknown_is_null(vault_app, db, client, stub, key):
    stub.expires_in = None
    connection_id = make_connection(stub, expires_in=-1)
    body = get(client, f"/connections/{connection_id}/access-token", key).json
    assert body["access_token"] == stub.issued_access_tokens[0] and body["expires_at"] is None


@both_backends
def test_needs_reconnect_is_409(vault_app, db, client, stub, key):
    connection_id = make_connection(stub, expires_in=10, refresh_token="rt-revoked")
    response = get(client, f"/connections/{connection_id}/access-token", key)
    assert_json_error(response, 409, "needs_reconnect")
    assert "rt-revoked" not in response.get_data(as_text=True)


@postgresql_only
def test_expired_and_provider_unreachable_is_503(vault_app, db, client, stub, key):
    connection_id = make_connection(stub, provider="down", expires_in=-10)
    response = get(client, f"/connections/{connection_id}/access-token", key)
    assert_json_error(response, 503, "provider_unavailable")
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert load(connection_id).status == "active"


@postgresql_only
def test_undecryptable_value_is_a_json_error(vault_app, db, client, stub, key, caplog):
    connection_id = make_connection(stub, expires_in=3600)
    row = db.session.scalar(select(Token).where(Token.kind == TokenKind.ACCESS.value))
    row.ciphertext = row.ciphertext[:-1] + bytes([row.ciphertext[-1] ^ 1])
    db.session.commit()
    response = get(client, f"/connections/{connection_id}/access-token", key)
    assert_json_error(response, 500, "undecryptable")
    handed_out = select(AuditEvent).where(AuditEvent.action == "token.handed_out")
    assert db.session.scalar(handed_out) is None


@postgresql_only
def test_not_found_forbidden_and_method_errors_are_json(vault_app, db, client, stub, key):
    other = Connection(provider="voicenter", account_subject="calls")
    db.session.add(other)
    db.session.commit()
    assert_json_error(get(client, "/connections/999/access-token", key), 404, "not_found")
    assert_json_error(get(client, f"/connections/{2**40}/access-token", key), 404, "not_found")
    assert_json_error(get(client, "/connections/-1/access-token", key), 404, "not_found")
    assert_json_error(get(client, "/nothing-here", key), 404, "not_found")
    # Another provider's connection looks exactly like a missing one (tests/test_api_abuse.py).
    assert_json_error(get(client, f"/connections/{other.id}/access-token", key), 404, "not_found")
    response = client.post("/api/v1/connections", headers={"Authorization": f"Bearer {key}"})
    assert_json_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


@postgresql_only
def test_no_key_or_token_in_logs(vault_app, db, client, stub, key, caplog):
    caplog.set_level(logging.DEBUG)
    fresh = make_connection(stub, subject="fresh", expires_in=3600)
    expiring = make_connection(stub, subject="expiring", expires_in=60)
    for connection_id in (fresh, expiring, 12345):
        get(client, f"/connections/{connection_id}/access-token", key)
    get(client, "/connections", "tvk_wrong-key-value")
    for secret in [key, "tvk_wrong-key-value", OLD_ACCESS_TOKEN, *stub.issued_access_tokens]:
        assert secret not in caplog.text
    refreshed = token_vault.token(load(expiring), TokenKind.ACCESS)
    assert refreshed.expires_at > utcnow() + timedelta(minutes=30)


@both_backends
def test_api_key_connections_hand_out_their_key(vault_app, db, client):
    connection_id = make_api_key_connection("voicenter", "calls", "vc-api-token-0123456789")
    voice = new_key(db, "dialer", providers=("voicenter",))
    response = get(client, f"/connections/{connection_id}/access-token", voice)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json == {"access_token": "vc-api-token-0123456789", "token_type": "Bearer",
                             "expires_at": None}


@both_backends
def test_database_outage_answers_503_json(vault_app, db, client, key, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def unreachable(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(service_keys, "authenticate", unreachable)
    response = get(client, "/connections", key)
    assert_json_error(response, 503, "database_unavailable")
    assert response.headers["Retry-After"] == "5"
