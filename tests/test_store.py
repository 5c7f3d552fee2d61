"""TokenVault service on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select, text

from vault.crypto import DecryptionError
from vault.models import Connection, ConnectionStatus, Token, TokenKind
from vault.tokens.store import NeedsReconnect, TokenUnavailable, token_vault

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock(app, monkeypatch):
    """Freeze the vault's clock at NOW (a test may move it)."""
    current = {"now": NOW}
    monkeypatch.setattr(token_vault, "clock", lambda: current["now"])
    return current


def make_connection(db, provider="google", subject="sub-1", **fields) -> Connection:
    connection = Connection(provider=provider, account_subject=subject, **fields)
    db.session.add(connection)
    db.session.flush()
    return connection


class CountingRefresher:
    """Stands in for the refresh engine at the seam: stores a new token like it would."""

    def __init__(self, new_value="ya29.refreshed-access-token", lifetime=3600, fail=None):
        self.calls = 0
        self.new_value, self.lifetime, self.fail = new_value, lifetime, fail

    def refresh(self, connection):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        token_vault.store(
            connection,
            TokenKind.ACCESS,
            self.new_value,
            expires_at=token_vault.clock() + timedelta(seconds=self.lifetime),
        )


def test_store_and_get_round_trip(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "ya29.access", expires_at=NOW + timedelta(hours=1))
    token_vault.store(connection, TokenKind.REFRESH, "1//refresh")
    db.session.commit()
    db.session.expire_all()
    assert token_vault.get(connection, "access") == "ya29.access"
    assert token_vault.get(connection, "refresh") == "1//refresh"
    assert token_vault.get(connection, "id") is None
    row = token_vault.token(connection, "access")
    assert row.expires_at == NOW + timedelta(hours=1)
    assert row.expires_at.tzinfo is not None
    assert row.key_id == token_vault.cipher.current_key_id


def test_store_replaces_the_value_of_the_same_kind(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "first")
    token_vault.store(connection, "access", "second")
    db.session.commit()
    assert db.session.scalar(select(Token).where(Token.kind == "access")) is not None
    assert len(db.session.scalars(select(Token)).all()) == 1
    assert token_vault.get(connection, "access") == "second"


def test_unknown_kind_and_empty_value_are_refused(db):
    connection = make_connection(db)
    with pytest.raises(ValueError):
        token_vault.store(connection, "password", "x")
    with pytest.raises(ValueError):
        token_vault.store(connection, "access", "")


def test_ciphertext_moved_to_another_connection_does_not_decrypt(db):
    first = make_connection(db, subject="a")
    second = make_connection(db, subject="b")
    token_vault.store(first, "refresh", "first-refresh")
    moved = token_vault.store(second, "refresh", "second-refresh")
    moved.ciphertext = token_vault.token(first, "refresh").ciphertext
    db.session.commit()
    with pytest.raises(DecryptionError):
        token_vault.get(second, "refresh")


def test_get_access_token_returns_a_fresh_token_without_refreshing(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "ya29.fresh", expires_at=NOW + timedelta(hours=1))
    refresher = CountingRefresher()
    token_vault.set_refresher(refresher)
    token = token_vault.get_access_token(connection, buffer=300)
    assert (token.value, token.token_type) == ("ya29.fresh", "Bearer")
    assert token.expires_at == NOW + timedelta(hours=1)
    assert refresher.calls == 0
    assert "ya29.fresh" not in repr(token)


def test_get_access_token_refreshes_within_the_buffer(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "ya29.old", expires_at=NOW + timedelta(seconds=200))
    token_vault.store(connection, "refresh", "1//refresh")
    db.session.commit()
    refresher = CountingRefresher()
    token_vault.set_refresher(refresher)
    token = token_vault.get_access_token(connection, buffer=timedelta(seconds=300))
    assert refresher.calls == 1
    assert token.value == "ya29.refreshed-access-token"
    assert token.expires_at == NOW + timedelta(hours=1)


def test_get_access_token_uses_the_configured_buffer(app, db, clock):
    app.config["VAULT_REFRESH_BUFFER_SECONDS"] = 600
    connection = make_connection(db)
    token_vault.store(connection, "access", "ya29.old", expires_at=NOW + timedelta(seconds=500))
    refresher = CountingRefresher()
    token_vault.set_refresher(refresher)
    token_vault.get_access_token(connection)
    assert refresher.calls == 1


def test_expiry_unknown_is_handed_out_as_unknown(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "opaque-token")
    refresher = CountingRefresher()
    token_vault.set_refresher(refresher)
    token = token_vault.get_access_token(connection)
    assert token.expires_at is None
    assert refresher.calls == 0


def test_expired_token_without_refresher_is_unavailable(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "ya29.dead", expires_at=NOW - timedelta(seconds=1))
    token_vault.set_refresher(None)
    with pytest.raises(TokenUnavailable):
        token_vault.get_access_token(connection)


def test_refresher_failure_propagates(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "ya29.dead", expires_at=NOW - timedelta(seconds=1))
    token_vault.set_refresher(CountingRefresher(fail=NeedsReconnect("invalid_grant")))
    with pytest.raises(NeedsReconnect):
        token_vault.get_access_token(connection)


def test_needs_reconnect_connection_hands_out_nothing(db, clock):
    connection = make_connection(db)
    token_vault.store(connection, "access", "ya29.x", expires_at=NOW + timedelta(hours=1))
    token_vault.mark_invalid(connection, "invalid_grant: Token has been expired or revoked.")
    db.session.commit()
    assert connection.status == ConnectionStatus.NEEDS_RECONNECT.value
    assert connection.last_error.startswith("invalid_grant")
    assert token_vault.token(connection, "access").is_valid is False
    with pytest.raises(NeedsReconnect):
        token_vault.get_access_token(connection)


def test_mark_invalid_keeps_errors_short_and_single_line(db):
    connection = make_connection(db)
    token_vault.mark_invalid(connection, "boom\n" * 500, status=ConnectionStatus.ERROR)
    assert connection.status == "error"
    assert "\n" not in connection.last_error and len(connection.last_error) <= 500


def test_delete_removes_tokens(db):
    connection = make_connection(db)
    for kind in ("access", "refresh", "id"):
        token_vault.store(connection, kind, f"value-{kind}")
    assert token_vault.delete(connection, ["id"]) == 1
    assert token_vault.get(connection, "id") is None
    assert token_vault.delete(connection) == 2
    db.session.commit()
    assert db.session.scalars(select(Token)).all() == []


def test_deleting_a_connection_cascades_to_its_tokens(db):
    connection = make_connection(db)
    token_vault.store(connection, "access", "value")
    db.session.commit()
    db.session.delete(connection)
    db.session.commit()
    assert db.session.scalars(select(Token)).all() == []


def test_no_plaintext_in_any_column_of_any_table(db, clock):
    secrets = {
        "access": "ya29.a0AfH6SMBx-plaintext-access-token",
        "refresh": "1//0gplaintext-refresh-token-value",
        "id": "eyJhbGciOiJSUzI1NiJ9.plaintext-id-token.signature",
        "api_key": "vc-api-key-plaintext-123456",
        "api_secret": "gi-api-secret-plaintext-987654",
    }
    connection = make_connection(db, account_email="ops@example.com")
    for kind, value in secrets.items():
        token_vault.store(connection, kind, value, expires_at=NOW + timedelta(hours=1))
    db.session.commit()

    found = []
    with db.engine.connect() as raw:
        for table in inspect(raw).get_table_names():
            for row in raw.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    rendered = value if isinstance(value, bytes) else str(value).encode()
                    found += [kind for kind, secret in secrets.items() if secret.encode() in rendered]
    assert found == []
    assert db.session.scalar(select(Token.key_id).limit(1)) == token_vault.cipher.current_key_id
