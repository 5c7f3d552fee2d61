"""SQLite with `make run`: the web server and a worker share one file, and a refresh in
flight holds no write lock (vault/refresh/rows.py, "leases").

The worker is a real ``flask vault worker --once`` process; its provider answers only when
the test releases it (at the latest after ``HOLD_SECONDS``, so a broken test cannot hang),
so what the web app does meanwhile is causally during the provider call, not merely soon
after it started.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.support.builders import login, make_user
from tests.support.gated_provider import HOLD_SECONDS, GatedProvider
from tests.support.processes import flask_process
from tests.support.refresh_fixtures import OLD_ACCESS_TOKEN, load, make_connection
from vault.models import RefreshLease, TokenKind, utcnow
from vault.refresh.engine import Outcome
from vault.refresh.rows import LockTimeout, lock_row
from vault.services import service_keys
from vault.tokens.store import token_vault


@pytest.fixture
def stub():
    with GatedProvider() as provider:
        yield provider


@pytest.fixture
def stub_config(stub_config):
    # Longer than the gate's ceiling: the held refresh must succeed, not time out.
    stub_config.update(VAULT_PROVIDER_TIMEOUT_SECONDS=HOLD_SECONDS + 10)
    return stub_config


def test_pages_sign_in_and_hand_outs_answer_while_a_worker_refresh_waits_for_the_provider(
    vault_app, db, stub, stub_config, client
):
    # Hand-outs of the connection being refreshed wait this long for its lease, then give
    # out the still-valid token, as they do for a PostgreSQL row lock.
    vault_app.config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"] = 0.5
    due = make_connection(stub, subject="due", expires_in=90)
    fresh = make_connection(stub, subject="fresh", expires_in=3600)
    make_user("viewer@example.com")
    _, key = service_keys.create_key("billing", ["acme"], {"acme"})
    db.session.commit()
    staff = vault_app.test_client()
    assert login(staff, "viewer@example.com").status_code == 302
    bearer = {"Authorization": f"Bearer {key}"}

    worker = flask_process(stub_config, "vault", "worker", "--once")
    answers: dict[str, int] = {}
    try:
        assert stub.entered.wait(timeout=60), worker.communicate(timeout=10)[0]
        # The worker's refresh of "due" is now waiting for the provider.
        for path in ("/", "/health", "/connections", f"/connections/{due}"):
            answers[path] = staff.get(path).status_code
        newcomer = vault_app.test_client()
        answers["sign-in"] = login(newcomer, "viewer@example.com").status_code
        answers["hand-out"] = client.get(
            f"/api/v1/connections/{fresh}/access-token", headers=bearer
        ).status_code
        being_refreshed = client.get(f"/api/v1/connections/{due}/access-token", headers=bearer)
        answers["hand-out of the connection in flight"] = being_refreshed.status_code
        still_in_flight = not stub.answered.is_set() and worker.poll() is None
    finally:
        stub.release.set()
    output, _ = worker.communicate(timeout=60)

    assert still_in_flight, "the provider had answered before the web app was done"
    assert answers == {
        "/": 200, "/health": 200, "/connections": 200, f"/connections/{due}": 200,
        "sign-in": 302, "hand-out": 200, "hand-out of the connection in flight": 200,
    }
    # The lease kept the web app from asking the provider too: the still-valid token went out.
    assert being_refreshed.get_json()["access_token"] == OLD_ACCESS_TOKEN
    assert worker.returncode == 0, output
    assert "refresh-due: ok (Refreshed 1" in output
    assert stub.count() == 1
    assert token_vault.get(load(due), TokenKind.ACCESS) == stub.issued_access_tokens[0]
    assert db.session.scalars(select(RefreshLease)).all() == []


def test_a_live_lease_keeps_other_refreshes_out_and_a_lapsed_one_is_taken_over(
    vault_app, db, stub
):
    engine = vault_app.extensions["refresh_engine"]
    vault_app.config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"] = 0.3
    connection_id = make_connection(stub, expires_in=60)
    stub.release.set()
    # Another process's refresh holds the lease (claimed and committed: no lock held).
    db.session.add(RefreshLease(connection_id=connection_id, claim="someone-else",
                                expires_at=utcnow() + timedelta(minutes=1)))
    db.session.commit()

    with pytest.raises(LockTimeout):
        lock_row(connection_id, timeout=0.2)
    busy = engine.run(connection_id, window=300)
    assert (busy.outcome, busy.usable) == (Outcome.UNAVAILABLE, True)
    batch = engine.run(connection_id, window=300, claimed=True)
    assert batch.outcome is Outcome.SKIPPED
    assert stub.count() == 0

    # Its holder crashed: once the lease has lapsed, the next refresh takes it over.
    db.session.get(RefreshLease, connection_id).expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert engine.run(connection_id, window=300).outcome is Outcome.REFRESHED
    assert stub.count() == 1
    assert db.session.scalars(select(RefreshLease)).all() == []


def test_a_refresh_that_outlived_its_lease_keeps_the_rotated_token_when_nobody_stored(
    vault_app, db, stub
):
    # The holder's lease lapsed and was taken over, but the newcomer has stored nothing yet:
    # the provider's answer (a rotated refresh token) is stored, not thrown away.
    engine = vault_app.extensions["refresh_engine"]
    connection_id = make_connection(stub, expires_in=60)
    stub.release.set()
    original = stub.__class__._answer

    def steal_the_lease(self, request, respond):
        from vault.extensions import db as other

        with vault_app.app_context():
            lease = other.session.get(RefreshLease, connection_id)
            lease.claim = "newcomer"
            other.session.commit()
        return original(self, request, respond)

    stub._answer = steal_the_lease.__get__(stub)
    result = engine.run(connection_id, window=300)
    assert result.outcome is Outcome.REFRESHED
    refresh_token = token_vault.get(load(connection_id), TokenKind.REFRESH)
    assert refresh_token in stub.valid_refresh_tokens
