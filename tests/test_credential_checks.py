"""Credential checks against a local HTTP stub: 200, 401, 403, 429, 500 and a slow answer;
each kind of check, the worker's job and its claims, the CLI and the Check now button."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from tests.support.builders import post_form
from tests.support.check_stub import CheckStub
from tests.support.refresh_fixtures import (
    both_backends,
    load,
    make_api_key_connection,
    make_connection,
)
from vault.models import AuditEvent, Connection, ConnectionStatus, TokenKind, utcnow
from vault.services.checks import (
    CheckResult,
    check_connection,
    check_due_credentials,
    how_checked,
)
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database

PARTNER_KEY = "pk-live-0123456789abcdef"


@pytest.fixture
def checks():
    with CheckStub() as stub:
        yield stub


@pytest.fixture
def check_config(app_config, providers_file, stub, checks):
    providers_file.write_text(
        stub.providers_toml("acme") + f'userinfo_url = "{checks.url("/userinfo")}"\n'
        + "[partner]\n" 'preset = "api_key"\n'
        f'check_url = "{checks.url("/check")}"\ncheck_auth = "header:X-Api-Key"\n'
        "[bearerco]\n" 'preset = "api_key"\n' f'check_url = "{checks.url("/check")}"\n'
        "[voicenter]\n" 'preset = "voicenter"\n' f'check_url = "{checks.url("/hub/cdr/")}"\n'
        "[whatsapp]\n" 'preset = "whatsapp"\n' f'check_url = "{checks.url("/me")}"\n'
        "[plain]\n" 'preset = "api_key"\n'
        "[greeninvoice]\n" 'preset = "greeninvoice"\n' f'token_url = "{stub.greeninvoice_url}"\n',
        encoding="utf-8",
    )
    app_config.update(VAULT_PROVIDER_TIMEOUT_SECONDS=1, VAULT_REFRESH_BACKOFF_BASE_SECONDS=30,
                      VAULT_REFRESH_BACKOFF_CAP_SECONDS=3600, VAULT_CHECK_INTERVAL_HOURS=24)
    return app_config


@pytest.fixture
def check_app(check_config, app):
    return app


def run_check(connection_id: int, db, actor="cli"):
    outcome = check_connection(load(connection_id), actor=actor, now=utcnow())
    db.session.commit()
    return outcome, load(connection_id)


@both_backends
def test_200_proves_the_key_sent_as_check_auth_says(check_app, db, checks):
    connection_id = make_api_key_connection("partner", "line 1", PARTNER_KEY)
    outcome, connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.OK
    assert checks.requests[-1]["headers"]["X-Api-Key"] == PARTNER_KEY
    assert "Authorization" not in checks.requests[-1]["headers"]
    assert connection.check_result == "ok" and connection.last_checked_at is not None
    assert connection.status == "active" and connection.check_failure_count == 0
    assert connection.next_check_at - connection.last_checked_at == timedelta(hours=24)
    bearer_id = make_api_key_connection("bearerco", "line 2", PARTNER_KEY)
    assert run_check(bearer_id, db)[0].result is CheckResult.OK
    assert checks.requests[-1]["headers"]["Authorization"] == f"Bearer {PARTNER_KEY}"


@both_backends
@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_need_reconnect_with_the_provider_reason_redacted(
    check_app, db, checks, status
):
    connection_id = make_api_key_connection("partner", "line 1", PARTNER_KEY)
    checks.answer_next(status, {"error": {"message": f"Key {PARTNER_KEY} was revoked"}})
    outcome, connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.REJECTED and outcome.failed
    assert connection.status == ConnectionStatus.NEEDS_RECONNECT.value
    assert f"HTTP {status}" in connection.check_message
    assert "was revoked" in connection.check_message
    for text in (connection.check_message, connection.last_error, outcome.message):
        assert PARTNER_KEY not in text
    assert connection.reconnect_reason.startswith("stopped")
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "connection.checked"))
    assert [e.outcome for e in event] == ["failure"]


@both_backends
@pytest.mark.parametrize(("status", "headers", "delay"), [
    (429, {"Retry-After": "600"}, 600), (500, {}, 30), (503, {}, 30),
])
def test_429_and_5xx_are_transient_and_back_off(check_app, db, checks, status, headers, delay):
    connection_id = make_api_key_connection("partner", "line 1", PARTNER_KEY)
    checks.answer_next(status, {"error": "busy"}, headers)
    outcome, connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.FAILED
    assert connection.status == "active"  # kept
    assert connection.check_failure_count == 1
    assert connection.next_check_at - connection.last_checked_at == timedelta(seconds=delay)
    checks.answer_next(500)
    _outcome, again = run_check(connection_id, db)
    assert again.check_failure_count == 2
    assert again.next_check_at - again.last_checked_at == timedelta(seconds=60)
    assert run_check(connection_id, db)[1].check_failure_count == 0  # then it works


def test_a_slow_answer_is_a_timeout_not_a_refusal(check_app, db, checks):
    connection_id = make_api_key_connection("partner", "line 1", PARTNER_KEY)
    checks.delay = 2.5  # the provider timeout is 1 s
    outcome, connection = run_check(connection_id, db)
    checks.delay = 0
    assert outcome.result is CheckResult.FAILED
    assert "did not answer in time" in connection.check_message
    assert connection.status == "active"


def test_voicenter_sends_its_code_and_a_date_range(check_app, db, checks):
    connection_id = make_api_key_connection("voicenter", "switchboard", PARTNER_KEY)
    assert run_check(connection_id, db)[0].result is CheckResult.OK
    request = checks.requests[-1]
    assert request["path"] == "/hub/cdr/" and request["args"]["code"] == PARTNER_KEY
    start = datetime.fromisoformat(request["args"]["fromdate"]).replace(tzinfo=timezone.utc)
    end = datetime.fromisoformat(request["args"]["todate"]).replace(tzinfo=timezone.utc)
    assert end - start == timedelta(minutes=1)


@both_backends
def test_whatsapp_asks_who_the_token_is_and_learns_its_expiry(check_app, db, checks):
    expires = int((utcnow() + timedelta(days=50)).timestamp())
    checks.token_expires_at = expires
    connection_id = make_api_key_connection("whatsapp", "support", PARTNER_KEY)
    outcome, connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.OK and "Support line" in outcome.message
    assert checks.paths()[-2:] == ["/me", "/debug_token"]
    key = token_vault.token(connection, TokenKind.API_KEY)
    assert key.expires_at == datetime.fromtimestamp(expires, tz=timezone.utc)
    assert connection.reconnect_by == key.expires_at
    assert connection.reconnect_reason == "the pasted key expires"


def test_greeninvoice_is_checked_by_its_key_exchange(check_app, db, stub):
    key_id, secret = stub.issue_api_key()
    connection_id = make_api_key_connection("greeninvoice", "books", key_id, secret)
    assert run_check(connection_id, db)[0].result is CheckResult.OK
    assert stub.count("/greeninvoice/token") == 1
    wrong = make_api_key_connection("greeninvoice", "old books", key_id, "not-the-secret")
    outcome, connection = run_check(wrong, db)
    assert outcome.result is CheckResult.REJECTED and connection.status == "needs_reconnect"
    assert "not-the-secret" not in connection.check_message


@both_backends
def test_oauth_connections_use_userinfo_and_never_refresh(check_app, db, stub, checks):
    connection_id = make_connection(stub, expires_in=3600)
    assert run_check(connection_id, db)[0].result is CheckResult.OK
    assert checks.requests[-1]["path"] == "/userinfo"
    assert checks.requests[-1]["headers"]["Authorization"].startswith("Bearer at-0-")
    expired = make_connection(stub, subject="expired", expires_in=-60)
    seen = len(checks.requests)
    outcome, connection = run_check(expired, db)
    assert outcome.result is CheckResult.SKIPPED and "never refreshes" in outcome.message
    assert len(checks.requests) == seen and stub.count("/token") == 0
    assert connection.status == "active"


def test_providers_without_a_way_to_check_say_so(check_app, db, viewer_client):
    connection_id = make_api_key_connection("plain", "thing", PARTNER_KEY)
    assert how_checked(check_app.extensions["providers"].get("plain"), load(connection_id)) is None
    outcome, _connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.UNSUPPORTED and not outcome.failed
    page = viewer_client.get(f"/connections/{connection_id}").text
    assert "offers no way to check the stored credential" in page


@both_backends
def test_the_worker_job_checks_what_is_due_once(check_app, db, checks):
    first = make_api_key_connection("partner", "line 1", PARTNER_KEY)
    second = make_api_key_connection("bearerco", "line 2", PARTNER_KEY)
    claimed = make_api_key_connection("partner", "line 3", PARTNER_KEY)
    # Another worker holds this one: its claim moved next_check_at past now.
    db.session.execute(update(Connection).where(Connection.id == claimed)
                       .values(next_check_at=utcnow() + timedelta(minutes=5)))
    db.session.commit()
    now = utcnow()
    assert check_due_credentials(now) is True
    assert len(checks.requests) == 2
    assert {load(first).check_result, load(second).check_result} == {"ok"}
    assert load(claimed).last_checked_at is None
    assert check_due_credentials(now) is True
    assert len(checks.requests) == 2  # nothing was due any more
    # The system's routine successes are not audited; failures are.
    assert db.session.scalar(select(AuditEvent.id).where(
        AuditEvent.action == "connection.checked")) is None
    assert check_due_credentials(now + timedelta(hours=25)) is True
    assert len(checks.requests) == 5


def test_the_job_reports_a_failure_of_the_vault_itself(check_app, db, checks):
    connection_id = make_api_key_connection("partner", "line 1", PARTNER_KEY)
    token = token_vault.token(load(connection_id), TokenKind.API_KEY)
    # Tampered: the last byte flipped (setting it to a constant was a no-op 1 time in 256).
    token.ciphertext = bytes(token.ciphertext[:-1]) + bytes([token.ciphertext[-1] ^ 0x01])
    db.session.commit()
    assert check_due_credentials(utcnow()) is False
    assert load(connection_id).check_result == "failed"
    assert checks.requests == []


@both_backends
def test_the_cli_checks_and_exits_1_on_a_failure(check_app, db, checks, runner):
    make_api_key_connection("partner", "line 1", PARTNER_KEY)
    make_api_key_connection("bearerco", "line 2", PARTNER_KEY)
    result = runner.invoke(args=["vault", "check-credentials"])
    assert result.exit_code == 0, result.output
    assert "Checked 2 connections: 2 ok." in result.output
    checks.answer_next(401, {"message": "revoked"})
    result = runner.invoke(args=["vault", "check-credentials", "--provider", "partner", "--json"])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)  # log lines go to stderr
    assert summary["checked"] == 1 and summary["rejected"] == 1
    assert summary["results"][0]["provider"] == "partner"
    assert PARTNER_KEY not in result.output
    unknown = runner.invoke(args=["vault", "check-credentials", "--provider", "nope"])
    assert unknown.exit_code == 2 and "not in the providers file" in unknown.output


def test_check_now_is_an_audited_admin_post(check_app, db, checks, admin_client, viewer_client):
    connection_id = make_api_key_connection("partner", "line 1", PARTNER_KEY)
    path = f"/connections/{connection_id}/check"
    assert viewer_client.post(path).status_code in (400, 403)  # no CSRF token either
    denied = post_form(viewer_client, path, token_from=f"/connections/{connection_id}")
    assert denied.status_code == 403 and checks.requests == []
    page = admin_client.get(f"/connections/{connection_id}").text
    assert "Check now" in page and "a read-only request to" in page
    assert admin_client.post(path).status_code == 400  # CSRF
    done = post_form(admin_client, path, token_from=f"/connections/{connection_id}",
                     follow_redirects=True)
    assert done.status_code == 200 and "Check passed" in done.text
    assert len(checks.requests) == 1
    event = db.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "connection.checked")).one()
    assert event.actor == "admin@example.com" and event.outcome == "success"
    assert PARTNER_KEY not in (event.detail or "")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_workers_at_once_check_each_connection_once(check_app, db, checks):
    import threading

    ids = [make_api_key_connection("partner", f"line {n}", PARTNER_KEY) for n in range(12)]
    checks.delay = 0.05  # long enough for the two workers to interleave
    now, results = utcnow(), []

    def worker():
        with check_app.app_context():
            results.append(check_due_credentials(now))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    checks.delay = 0
    assert results == [True, True]
    assert len(checks.requests) == len(ids)  # none checked twice
    assert {load(connection_id).check_result for connection_id in ids} == {"ok"}


def test_recompute_limits_fills_in_existing_connections(check_app, db, stub, runner):
    connection_id = make_connection(stub, consented_at=utcnow())
    assert load(connection_id).reconnect_reason is None
    result = runner.invoke(args=["vault", "recompute-limits"])
    assert result.exit_code == 0 and "1 changed" in result.output
    assert load(connection_id).reconnect_reason == "no deadline: renews itself"
    assert "0 changed" in runner.invoke(args=["vault", "recompute-limits"]).output


@both_backends
def test_a_refusal_of_a_key_replaced_meanwhile_is_stale(check_app, db, checks, monkeypatch):
    """A 401 for the old key must not kill the key an admin pasted while it was checked."""
    from vault.extensions import db as vault_db
    from vault.models import Token
    from vault.oauth import checks as oauth_checks
    from vault.oauth.errors import GrantRejected

    old, new = "pk-old-0123456789abcdef", "pk-new-0123456789abcdef"
    connection_id = make_api_key_connection("partner", "line 1", old)

    def refused_after_a_new_key_is_pasted(provider, api_key, extra_params=None):
        assert api_key == old
        with vault_db.engine.begin() as other:  # another request, its own transaction
            other.execute(Token.__table__.update().where(
                Token.__table__.c.connection_id == connection_id).values(
                ciphertext=token_vault.cipher.encrypt(new, aad=b"x"), is_valid=True))
        raise GrantRejected("Partner answered HTTP 401: old key revoked")

    monkeypatch.setattr(oauth_checks, "check_url", refused_after_a_new_key_is_pasted)
    outcome, connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.SKIPPED and "changed while it was checked" in (
        outcome.message)
    assert connection.status == ConnectionStatus.ACTIVE.value
    assert all(t.is_valid for t in connection.tokens)
    assert connection.next_check_at <= utcnow()  # the new key is checked next round


@both_backends
def test_a_refused_access_token_with_a_refresh_token_is_left_to_the_refresh_engine(
    check_app, db, stub, checks
):
    connection_id = make_connection(stub, expires_in=3600)
    checks.answer_next(401, {"error": "invalid_token"})
    outcome, connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.SKIPPED
    assert outcome.message == "access token refused; refresh scheduled"
    assert connection.status == ConnectionStatus.ACTIVE.value
    access = token_vault.token(connection, TokenKind.ACCESS)
    assert access.expires_at <= utcnow() and stub.count("/token") == 0  # due, not refreshed
    refresh_token = token_vault.get(connection, TokenKind.REFRESH)
    assert refresh_token in stub.valid_refresh_tokens
    # The refresh engine decides next: the connection is now due for it.
    from vault.refresh.batch import count_due
    assert count_due(0) == 1


@both_backends
def test_a_refused_access_token_without_a_refresh_token_needs_reconnect(
    check_app, db, stub, checks
):
    connection_id = make_connection(stub, expires_in=3600)
    token_vault.delete(load(connection_id), [TokenKind.REFRESH])
    db.session.commit()
    checks.answer_next(401, {"error": "invalid_token"})
    outcome, connection = run_check(connection_id, db)
    assert outcome.result is CheckResult.REJECTED
    assert connection.status == ConnectionStatus.NEEDS_RECONNECT.value
