"""Single flight: 50 concurrent callers of one expiring token cause one provider request.

On PostgreSQL, from 50 threads of one process and from 50 processes of their own, each with
its own app. The provider stand-in answers slowly (so the callers really overlap) and, like
real providers, refuses a refresh token that was rotated away: a second refresh would fail.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.refresh_fixtures import load, make_connection, postgresql_only
from tests.support.refresh_workers import fetch_access_token
from vault.extensions import db as _db
from vault.models import AuditEvent, Connection, TokenKind
from vault.tokens.store import token_vault

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    postgresql_only,
    pytest.mark.shared_postgres_database,
]
CALLERS = 50
# forkserver: every child is a fresh process forked from a clean server process that has
# imported the app's modules once (spawn would import them 50 times: ~50 s on two cores).
# VAULT_TEST_MP_CONTEXT=spawn runs the same test with spawn.
MP_CONTEXT = os.environ.get("VAULT_TEST_MP_CONTEXT", "forkserver")


def preloadable_modules() -> list[str]:
    """What building an app imported here: the fork server imports it once for all children."""
    roots = {"vault", "flask", "flask_migrate", "flask_limiter", "flask_wtf", "authlib",
             "alembic", "sqlalchemy", "psycopg", "requests", "werkzeug", "cryptography"}
    return sorted(name for name in sys.modules if name.partition(".")[0] in roots)


def assert_one_refresh(stub, values, db, connection_id):
    assert stub.count() == 1
    assert len(stub.issued_access_tokens) == 1
    assert values == [stub.issued_access_tokens[0]] * CALLERS
    refresh_token = token_vault.get(load(connection_id), TokenKind.REFRESH)
    assert refresh_token in stub.valid_refresh_tokens  # the rotated one was stored
    refreshed = db.session.query(AuditEvent).filter_by(action="token.refreshed").count()
    assert refreshed == 1


def test_threads_cause_one_provider_request(vault_app, db, stub):
    stub.delay = 0.3
    connection_id = make_connection(stub, expires_in=60)
    barrier = threading.Barrier(CALLERS)

    def call(_):
        with vault_app.app_context():
            connection = _db.session.get(Connection, connection_id)
            _db.session.commit()  # hold no pooled connection while waiting
            barrier.wait(timeout=30)
            return token_vault.get_access_token(connection).value

    with ThreadPoolExecutor(CALLERS) as pool:
        values = list(pool.map(call, range(CALLERS)))
    assert_one_refresh(stub, values, db, connection_id)


def test_processes_cause_one_provider_request(vault_app, app_config, db, stub):
    stub.delay = 0.3
    connection_id = make_connection(stub, expires_in=60)
    context = multiprocessing.get_context(MP_CONTEXT)
    if MP_CONTEXT == "forkserver":
        context.set_forkserver_preload([*preloadable_modules(), "tests.support.refresh_forkserver"])
    barrier, results = context.Barrier(CALLERS), context.Queue()
    processes = [
        context.Process(
            target=fetch_access_token, args=(dict(app_config), connection_id, barrier, results)
        )
        for _ in range(CALLERS)
    ]
    for process in processes:
        process.start()
    try:
        answers = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    errors = [detail for status, detail in answers if status != "ok"]
    assert errors == []
    assert_one_refresh(stub, [detail for _, detail in answers], db, connection_id)
