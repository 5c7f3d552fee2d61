"""SQLite: the write lock is taken only after the provider answered (the lease covers the
call). When another writer holds it past busy_timeout at that moment, the refresh keeps the
answer and tries the storing transaction again rather than losing a rotated refresh token."""

from __future__ import annotations

import sqlite3
import threading

import pytest

import vault.database
from tests.support.gated_provider import GatedProvider
from tests.support.refresh_fixtures import load, make_connection
from vault.models import RefreshLease, TokenKind
from vault.refresh.engine import Outcome
from vault.tokens.store import token_vault


@pytest.fixture
def stub():
    with GatedProvider() as provider:
        yield provider


@pytest.fixture
def short_busy_timeout(vault_app, db, monkeypatch):
    """New SQLite connections give up on a busy write lock after 0.3 s."""
    monkeypatch.setattr(vault.database, "SQLITE_BUSY_TIMEOUT_MS", 300)
    db.engine.dispose()
    return db.engine.url.database


def _lock_while_the_provider_answers(stub, path: str, hold_seconds: float | None) -> dict:
    """Make another connection take SQLite's write lock as the provider answers; it lets go
    after ``hold_seconds`` (never when None: the test lets go)."""
    holder: dict = {}
    original = stub.__class__._answer

    def answer_then_someone_writes(self, request, respond):
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        holder["connection"] = other
        if hold_seconds is not None:
            holder["timer"] = threading.Timer(hold_seconds, other.rollback)
            holder["timer"].start()
        return original(self, request, respond)

    stub._answer = answer_then_someone_writes.__get__(stub)
    return holder


def test_a_rotated_refresh_token_is_stored_once_the_lock_is_free(
    vault_app, db, stub, short_busy_timeout
):
    engine = vault_app.extensions["refresh_engine"]
    connection_id = make_connection(stub, expires_in=60)
    before = token_vault.get(load(connection_id), TokenKind.REFRESH)
    stub.release.set()
    holder = _lock_while_the_provider_answers(stub, short_busy_timeout, hold_seconds=1.0)

    result = engine.run(connection_id, window=300)

    holder["timer"].join()
    holder["connection"].close()
    assert result.outcome is Outcome.REFRESHED and stub.count() == 1
    stored = token_vault.get(load(connection_id), TokenKind.REFRESH)
    assert stored != before and stored in stub.valid_refresh_tokens
    assert db.session.query(RefreshLease).count() == 0  # the lease ended with the store
    # The stored refresh token works: the next refresh is accepted by the provider.
    assert engine.run(connection_id, force=True).outcome is Outcome.REFRESHED


def test_the_claim_survives_a_failed_storing_transaction(vault_app, db, stub):
    """A release rolled back deleted nothing: the claim stays for a retry or abandon()."""
    from vault.refresh import rows

    connection_id = make_connection(stub, expires_in=60)
    assert rows.lock_row(connection_id, timeout=1) is not None
    rows.release(connection_id)
    db.session.rollback()
    rows.abandon(connection_id)  # needs the claim to delete the lease
    assert db.session.query(RefreshLease).count() == 0


def test_a_lock_that_never_frees_gives_a_failed_result_not_an_error(
    vault_app, db, stub, short_busy_timeout, caplog
):
    vault_app.config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"] = 1
    engine = vault_app.extensions["refresh_engine"]
    connection_id = make_connection(stub, expires_in=60)
    stub.release.set()
    holder = _lock_while_the_provider_answers(stub, short_busy_timeout, hold_seconds=None)
    try:
        result = engine.run(connection_id, window=300)  # returns rather than raising
    finally:
        holder["connection"].rollback()
        holder["connection"].close()
    assert result.outcome is Outcome.FAILED and "locked" in result.message
    assert "database stayed locked" in caplog.text
    assert not any(t in caplog.text for t in stub.valid_refresh_tokens)  # no secret logged
