"""``flask vault refresh-due`` and ``refresh_due()``: batch refresh, safe from several hosts."""

from __future__ import annotations

import json
import threading

import pytest

from tests.support.refresh_fixtures import both_backends, load, make_connection, postgresql_only
from vault import create_app
from vault.extensions import db as _db
from vault.models import TokenKind
from vault.refresh.batch import refresh_due
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database  # one database for the module


def refresh_due_cli(runner, *args):
    return runner.invoke(args=["vault", "refresh-due", *args])


@both_backends
def test_refreshes_what_is_due_and_reports(vault_app, db, stub, runner):
    due = [make_connection(stub, subject=f"due-{n}", expires_in=60) for n in range(3)]
    later = make_connection(stub, subject="later", expires_in=7200)
    revoked = make_connection(stub, subject="revoked", expires_in=30, refresh_token="rt-revoked")

    result = refresh_due_cli(runner, "--concurrency", "4")

    assert result.exit_code == 1  # one connection needs reconnecting
    assert "Refreshed 3, failed 0, needs reconnect 1, skipped 0 (4 due" in result.output
    assert f"connection {revoked}: needs_reconnect: invalid_grant" in result.output
    assert stub.count() == 4
    for connection_id in due:
        assert token_vault.get(load(connection_id), TokenKind.ACCESS).startswith("at-")
    assert token_vault.get(load(later), TokenKind.ACCESS).startswith("at-0-old")
    assert load(revoked).status == "needs_reconnect"

    again = refresh_due_cli(runner)
    assert again.exit_code == 0 and "Refreshed 0" in again.output and "(0 due" in again.output
    wider = refresh_due_cli(runner, "--within", "10000", "--json")
    assert wider.exit_code == 0
    assert json.loads(wider.stdout)["refreshed"] == 4  # "later" and the three refreshed
    assert stub.count() == 8


@both_backends
def test_failures_back_off_and_json_reports_them(vault_app, db, stub, runner):
    failing = make_connection(stub, subject="failing", expires_in=60)
    stub.fail_next(503, {"error": "temporarily_unavailable"})
    result = refresh_due_cli(runner, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["due"], report["failed"], report["ok"]) == (1, 1, False)
    problem = report["problems"][0]
    assert problem["connection_id"] == failing and "HTTP 503" in problem["message"]
    assert problem["retry_at"] is not None
    # Backing off: not due for the next run, which succeeds with nothing to do.
    assert refresh_due_cli(runner).exit_code == 0
    assert stub.count() == 1


@both_backends
def test_refresh_due_function_summary(vault_app, db, stub):
    for n in range(5):
        make_connection(stub, subject=f"c{n}", expires_in=10)
    seen = []
    summary = refresh_due(within=300, concurrency=3, progress=seen.append)
    assert (summary.due, summary.refreshed, summary.ok) == (5, 5, True)
    assert len(seen) == 5 and summary.line().startswith("Refreshed 5, failed 0")


@postgresql_only
def test_every_worker_gets_a_database_connection(vault_app, db, stub):
    # SQLAlchemy's default pool stops at 15 connections: beyond that, workers would wait.
    stub.delay = 0.3
    for n in range(48):
        make_connection(stub, subject=f"c{n}", expires_in=10)
    pool = _db.engine.pool
    in_use = []
    summary = refresh_due(within=300, concurrency=24,
                          progress=lambda _result: in_use.append(pool.checkedout()))
    assert summary.refreshed == 48
    assert max(in_use) > 15


@pytest.mark.slow
@postgresql_only
def test_concurrent_runs_never_refresh_a_connection_twice(vault_app, app_config, db, stub):
    stub.delay = 0.1  # long enough for both runs to overlap
    connections = [make_connection(stub, subject=f"c{n}", expires_in=60) for n in range(40)]
    other_host = create_app(app_config)  # its own engine, pool and refresh engine
    barrier = threading.Barrier(2)
    summaries = []

    def run(app):
        with app.app_context():
            barrier.wait(timeout=10)
            summaries.append(refresh_due(within=300, concurrency=4))
            _db.session.remove()

    threads = [threading.Thread(target=run, args=(app,)) for app in (vault_app, other_host)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    with other_host.app_context():
        _db.engine.dispose()

    assert stub.count() == 40  # one request per connection, across both runs
    assert sum(s.refreshed for s in summaries) == 40
    assert all(s.ok for s in summaries) and all(s.refreshed > 0 for s in summaries)
    for connection_id in connections:
        assert token_vault.get(load(connection_id), TokenKind.REFRESH) in stub.valid_refresh_tokens
