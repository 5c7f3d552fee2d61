"""The refresh engine (vault/refresh/engine.py) against a real HTTP token endpoint, on both backends."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from tests.support.refresh_fixtures import (
    OLD_ACCESS_TOKEN,
    both_backends,
    load,
    make_api_key_connection,
    make_connection,
    postgresql_only,
)
from vault.grants import RefreshTokenGrant
from vault.models import AuditEvent, ConnectionStatus, TokenKind, utcnow
from vault.refresh.engine import Outcome, ProviderUnavailable, refresh_now
from vault.tokens.store import NeedsReconnect, TokenUnavailable, token_vault

pytestmark = pytest.mark.shared_postgres_database  # one database for the module


def access_token_of(connection_id: int):
    return token_vault.get_access_token(load(connection_id))


def audit_actions(db) -> list[tuple[str, str]]:
    events = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id))
    return [(event.action, event.outcome) for event in events]


@both_backends
def test_expiring_token_is_refreshed_and_the_rotated_refresh_token_stored(vault_app, db, stub):
    connection_id = make_connection(stub, expires_in=60)
    old_refresh = token_vault.get(load(connection_id), TokenKind.REFRESH)

    token = access_token_of(connection_id)

    assert stub.count() == 1
    assert token.value == stub.issued_access_tokens[0] != OLD_ACCESS_TOKEN
    assert token.expires_at > utcnow() + timedelta(seconds=3500)
    connection = load(connection_id)
    new_refresh = token_vault.get(connection, TokenKind.REFRESH)
    assert new_refresh != old_refresh and new_refresh in stub.valid_refresh_tokens
    assert old_refresh not in stub.valid_refresh_tokens
    assert connection.status == "active" and connection.failure_count == 0
    assert connection.last_refreshed_at is not None and connection.next_refresh_at is None
    assert ("token.refreshed", "success") in audit_actions(db)
    # A second call finds the fresh token and does not ask the provider again.
    assert access_token_of(connection_id).value == token.value
    assert stub.count() == 1


@both_backends
def test_access_and_rotated_refresh_token_are_committed_together(
    vault_app, db, stub, monkeypatch
):
    connection_id = make_connection(stub, expires_in=60)
    real_store = token_vault.store

    def store_failing_on_refresh(connection, kind, value, **kwargs):
        if kind == TokenKind.REFRESH:
            raise RuntimeError("disk full")
        return real_store(connection, kind, value, **kwargs)

    monkeypatch.setattr(token_vault, "store", store_failing_on_refresh)
    with pytest.raises(RuntimeError):
        access_token_of(connection_id)
    monkeypatch.undo()
    # Nothing of the half-done refresh was committed: the old access token is still there.
    assert token_vault.get(load(connection_id), TokenKind.ACCESS) == OLD_ACCESS_TOKEN


@postgresql_only
def test_rotation_is_one_transaction_on_postgresql(vault_app, db, stub):
    connection_id = make_connection(stub, expires_in=60)
    access_token_of(connection_id)
    writers = db.session.execute(
        text("SELECT DISTINCT xmin::text FROM tokens WHERE connection_id = :id"),
        {"id": connection_id},
    ).scalars().all()
    assert len(writers) == 1  # access and refresh rows written by the same transaction


@postgresql_only
def test_old_refresh_token_kept_when_none_is_returned(vault_app, db, stub):
    stub.rotate = False
    stub.valid_refresh_tokens.add("rt-long-lived-value")
    connection_id = make_connection(stub, refresh_token="rt-long-lived-value")
    access_token_of(connection_id)
    assert token_vault.get(load(connection_id), TokenKind.REFRESH) == "rt-long-lived-value"


@both_backends
def test_missing_expires_in_means_expiry_unknown(vault_app, db, stub):
    stub.expires_in = None
    connection_id = make_connection(stub, expires_in=-10)
    token = access_token_of(connection_id)
    assert token.value == stub.issued_access_tokens[0]
    assert token.expires_at is None
    assert token_vault.token(load(connection_id), TokenKind.ACCESS).expires_at is None
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "token.refreshed"))
    assert "expiry unknown" in event.detail


@postgresql_only
def test_refresh_token_expiry_is_stored(vault_app, db, stub):
    stub.refresh_token_expires_in = 86400
    connection_id = make_connection(stub)
    access_token_of(connection_id)
    refresh_row = token_vault.token(load(connection_id), TokenKind.REFRESH)
    assert refresh_row.expires_at is not None
    assert abs((refresh_row.expires_at - utcnow()) - timedelta(days=1)) < timedelta(minutes=1)


@postgresql_only
def test_client_secret_post_and_discovery(vault_app, db, stub):
    post = make_connection(stub, provider="acme-post", subject="post")
    discovered = make_connection(stub, provider="oidcacme", subject="discovered")
    assert access_token_of(post).value == stub.issued_access_tokens[0]
    assert access_token_of(discovered).value == stub.issued_access_tokens[1]
    assert stub.requests[0]["form"]["client_secret"] == stub.client_secret
    assert "client_secret" not in stub.requests[1]["form"]  # basic auth by default


@both_backends
def test_invalid_grant_needs_reconnect_and_is_not_retried(vault_app, db, stub):
    connection_id = make_connection(stub, refresh_token="rt-revoked-by-the-user")
    with pytest.raises(NeedsReconnect) as raised:
        access_token_of(connection_id)
    connection = load(connection_id)
    assert connection.status == ConnectionStatus.NEEDS_RECONNECT.value
    assert connection.last_error.startswith("invalid_grant")
    assert "rt-revoked" not in connection.last_error and "rt-revoked" not in str(raised.value)
    assert ("token.refresh_failed", "failure") in audit_actions(db)
    with pytest.raises(NeedsReconnect):
        access_token_of(connection_id)
    assert refresh_now(load(connection_id), "system").outcome is Outcome.NEEDS_RECONNECT
    assert stub.count() == 1


@postgresql_only
def test_invalid_grant_after_someone_else_rotated_is_not_a_reconnect(
    vault_app, db, stub, monkeypatch
):
    connection_id = make_connection(stub, refresh_token="rt-stale")
    real_request = RefreshTokenGrant.request

    def rotated_meanwhile(grant, provider, credentials, **kwargs):
        # Another writer (a reconnect) replaces the grant while our call is on the wire.
        connection = load_current(connection_id)
        token_vault.store(connection, TokenKind.REFRESH, stub.issue_refresh_token())
        token_vault.store(connection, TokenKind.ACCESS, "at-from-the-reconnect",
                          expires_at=utcnow() + timedelta(hours=1))
        return real_request(grant, provider, credentials, **kwargs)

    def load_current(connection_id):
        from vault.extensions import db as _db
        from vault.models import Connection

        return _db.session.get(Connection, connection_id)

    monkeypatch.setattr(RefreshTokenGrant, "request", rotated_meanwhile)
    token = access_token_of(connection_id)
    assert token.value == "at-from-the-reconnect"
    assert load(connection_id).status == "active"


@both_backends
def test_server_error_keeps_tokens_and_backs_off(vault_app, db, stub):
    status = 503
    connection_id = make_connection(stub, expires_in=60)
    refresh_before = token_vault.get(load(connection_id), TokenKind.REFRESH)
    stub.fail_next(status, "<html>Service Unavailable</html>")

    # Still valid for a minute: the old token is handed out despite the failed refresh.
    assert access_token_of(connection_id).value == OLD_ACCESS_TOKEN
    connection = load(connection_id)
    assert connection.status == "active" and connection.failure_count == 1
    assert f"HTTP {status}" in connection.last_error
    assert timedelta(seconds=25) < connection.next_refresh_at - utcnow() <= timedelta(seconds=30)
    assert token_vault.get(connection, TokenKind.REFRESH) == refresh_before
    assert refresh_before in stub.valid_refresh_tokens
    # Backing off: the next call does not ask the provider.
    access_token_of(connection_id)
    assert stub.count() == 1
    # A manual refresh ignores the back-off; success clears the error.
    result = refresh_now(load(connection_id), "admin@example.com")
    assert result.outcome is Outcome.REFRESHED and result.ok
    connection = load(connection_id)
    assert connection.failure_count == 0
    assert connection.last_error is None and connection.next_refresh_at is None
    assert connection.status == "active"


@postgresql_only
def test_backoff_grows_exponentially_up_to_the_cap(vault_app, db, stub):
    vault_app.config["VAULT_REFRESH_BACKOFF_CAP_SECONDS"] = 100
    connection_id = make_connection(stub, expires_in=60)
    delays = []
    for _ in range(4):
        stub.fail_next(502)
        result = refresh_now(load(connection_id), "system")
        assert result.outcome is Outcome.FAILED
        delays.append(round((result.retry_at - utcnow()).total_seconds() / 10) * 10)
    assert delays == [30, 60, 100, 100]
    assert load(connection_id).failure_count == 4


@both_backends
def test_a_retry_after_beyond_any_date_waits_the_back_off_cap(vault_app, db, stub):
    vault_app.config["VAULT_REFRESH_BACKOFF_CAP_SECONDS"] = 3600
    connection_id = make_connection(stub, expires_in=60)
    stub.fail_next(429, {"error": "rate_limited"}, {"Retry-After": "999999999999"})
    result = refresh_now(load(connection_id), "system")
    assert result.outcome is Outcome.FAILED
    assert timedelta(seconds=3590) < result.retry_at - utcnow() <= timedelta(seconds=3600)


@postgresql_only
def test_429_retry_after_is_honoured(vault_app, db, stub):
    connection_id = make_connection(stub, expires_in=60)
    stub.fail_next(429, {"error": "rate_limited"}, {"Retry-After": "600"})
    access_token_of(connection_id)
    connection = load(connection_id)
    assert timedelta(seconds=590) < connection.next_refresh_at - utcnow() <= timedelta(seconds=600)
    assert "rate limited" in connection.last_error and connection.status == "active"


@postgresql_only
def test_expired_token_and_provider_down_is_unavailable_not_reconnect(vault_app, db, stub):
    connection_id = make_connection(stub, provider="down", expires_in=-5)
    with pytest.raises(ProviderUnavailable) as raised:
        access_token_of(connection_id)
    assert raised.value.retry_at is not None
    connection = load(connection_id)
    assert connection.status == "active" and connection.failure_count == 1
    assert "could not be reached" in connection.last_error


@postgresql_only
def test_timeout_is_a_provider_failure(vault_app, db, stub):
    vault_app.config["VAULT_PROVIDER_TIMEOUT_SECONDS"] = 0.2
    stub.delay = 0.6
    connection_id = make_connection(stub, expires_in=-5)
    with pytest.raises(ProviderUnavailable):
        access_token_of(connection_id)
    assert "did not answer in time" in load(connection_id).last_error


@postgresql_only
def test_refresh_locks_still_let_other_rows_refer_to_the_connection(vault_app, db, stub):
    # A refresh holds its lock for as long as the provider takes to answer. FOR NO KEY
    # UPDATE excludes other refreshes but not KEY SHARE, the lock a foreign-key check on a
    # referring row takes; FOR UPDATE would make every such write wait for the provider.
    from vault.refresh import rows as refresh_rows
    from vault.refresh.batch import _Claims

    connection_id = make_connection(stub, expires_in=30)
    claims = _Claims(timedelta(minutes=5), utcnow(), postgres=True)
    for take_lock in (lambda: refresh_rows.lock_row(connection_id, timeout=5), claims.next):
        assert take_lock().id == connection_id
        with db.engine.connect() as other:
            key_share = text("SELECT id FROM connections WHERE id = :id FOR KEY SHARE NOWAIT")
            assert other.execute(key_share, {"id": connection_id}).scalar() == connection_id
            other.rollback()
            exclusive = text("SELECT id FROM connections WHERE id = :id FOR NO KEY UPDATE NOWAIT")
            with pytest.raises(OperationalError):  # a second refresh must still wait
                other.execute(exclusive, {"id": connection_id})
        db.session.rollback()


@postgresql_only
def test_lock_timeout_is_not_a_credential_failure(vault_app, db, stub):
    vault_app.config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"] = 0.3
    expired = make_connection(stub, subject="expired", expires_in=-5)
    due = make_connection(stub, subject="due", expires_in=60)
    blocker = db.engine.connect()  # another worker, holding every row lock
    blocker.begin()
    blocker.execute(text("SELECT id FROM connections FOR UPDATE"))
    try:
        with pytest.raises(TokenUnavailable) as raised:
            access_token_of(expired)
        assert not isinstance(raised.value, NeedsReconnect)
        assert access_token_of(due).value == OLD_ACCESS_TOKEN  # still valid: handed out
    finally:
        blocker.rollback()
        blocker.close()
    for connection_id in (expired, due):
        connection = load(connection_id)
        assert (connection.status, connection.failure_count) == ("active", 0)
    assert stub.count() == 0


@postgresql_only
def test_refresh_now_refreshes_a_fresh_token(vault_app, db, stub):
    from vault.services.accounts import create_user

    admin = create_user("admin@example.com", "admin", "a-long-password-1234")
    db.session.commit()
    connection_id = make_connection(stub, expires_in=3000)
    result = refresh_now(load(connection_id), admin)
    assert result.outcome is Outcome.REFRESHED
    assert token_vault.get(load(connection_id), TokenKind.ACCESS) == stub.issued_access_tokens[0]
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "token.refreshed"))
    assert (event.actor, event.actor_user_id, event.connection_id) == (
        "admin@example.com", admin.id, connection_id
    )


@both_backends
def test_greeninvoice_key_exchange(vault_app, db, stub):
    key_id, key_secret = stub.issue_api_key()
    connection_id = make_api_key_connection("greeninvoice", "books", key_id, key_secret)

    token = access_token_of(connection_id)
    assert token.value == stub.issued_access_tokens[0] and token.value.count(".") == 2
    assert abs(token.expires_at - (utcnow() + timedelta(hours=1))) < timedelta(minutes=1)
    assert token_vault.get(load(connection_id), TokenKind.API_SECRET) == key_secret

    token_vault.store(load(connection_id), TokenKind.API_SECRET, "gi-secret-wrong")
    db.session.commit()
    assert refresh_now(load(connection_id), "system").outcome is Outcome.NEEDS_RECONNECT
    assert "gi-secret-wrong" not in load(connection_id).last_error


@postgresql_only
def test_api_key_provider_without_exchange_hands_out_its_key_unrefreshed(vault_app, db, stub):
    connection_id = make_api_key_connection("voicenter", "calls", "vc-key-value")
    assert access_token_of(connection_id).value == "vc-key-value"
    assert stub.count("/greeninvoice/token") + stub.count() == 0


@postgresql_only
def test_no_secret_reaches_logs_audit_or_errors(vault_app, db, stub, caplog):
    caplog.set_level(logging.DEBUG)
    ok = make_connection(stub, subject="ok")
    revoked = make_connection(stub, subject="revoked", refresh_token="rt-revoked-secret-value")
    failing = make_connection(stub, subject="failing")
    secrets_used = {OLD_ACCESS_TOKEN, stub.client_secret, "rt-revoked-secret-value"}
    secrets_used |= {token_vault.get(load(i), TokenKind.REFRESH) for i in (ok, failing)}

    access_token_of(ok)
    with pytest.raises(NeedsReconnect):
        access_token_of(revoked)
    stub.fail_next(503, {"error": "temporarily_unavailable", "refresh_token": "leak"})
    refresh_now(load(failing), "system")
    secrets_used |= set(stub.issued_access_tokens) | stub.valid_refresh_tokens

    stored = [
        str(value)
        for row in db.session.execute(text("SELECT * FROM audit_events")).all()
        + db.session.execute(text("SELECT last_error FROM connections")).all()
        for value in row
    ]
    for secret in secrets_used:
        assert secret not in caplog.text
        assert not any(secret in value for value in stored)
