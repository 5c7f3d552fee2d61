"""Alerts end to end with real parts: a refused refresh through the real engine, the outbox,
the worker's alerts job, an aiosmtpd server, a Standard Webhooks receiver verifying
signatures with the ``standardwebhooks`` library, and a Slack-shaped receiver.

Both backends; the two-workers test is in tests/test_alerts_workers.py.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from standardwebhooks import Webhook

from tests.support.alert_fixtures import BASE_URL, SMTP_PASSWORD, WEBHOOK_PATH, WEBHOOK_SECRET
from tests.support.refresh_fixtures import (
    OLD_ACCESS_TOKEN,
    both_backends,
    load,
    make_api_key_connection,
    make_connection,
)
from vault.alerts import delivery, rules
from vault.alerts.events import NEEDS_RECONNECT, RECOVERED, REFRESH_FAILING
from vault.models import (
    AccessLink,
    DeliveryAttempt,
    Notification,
    NotificationDelivery,
    TokenKind,
    utcnow,
)
from vault.refresh.engine import Outcome, refresh_now
from vault.services import reconnect_links
from vault.services.connections import recompute_reconnect_by
from vault.tokens.store import token_vault
from vault.worker.jobs import alerts_job

pytestmark = [both_backends, pytest.mark.shared_postgres_database]

@pytest.fixture
def stub_config(stub_config, alert_settings):
    """The refresh tests' stub providers, with e-mail and webhook channels (in place: the
    ``app`` fixture reads this same mapping)."""
    stub_config.update(alert_settings)
    return stub_config


def revoke_at_provider(stub, connection_id: int) -> None:
    """The provider refuses the refresh token: the real engine marks the connection."""
    stub.fail_next(400, {"error": "invalid_grant", "error_description": "Token revoked"})
    assert refresh_now(load(connection_id), "system").outcome is Outcome.NEEDS_RECONNECT


def secrets_of(connection_id: int, stub) -> list[str]:
    connection = load(connection_id)
    values = [token_vault.get(connection, kind) for kind in (TokenKind.ACCESS, TokenKind.REFRESH)]
    return [v for v in values if v] + [OLD_ACCESS_TOKEN, stub.client_secret, SMTP_PASSWORD,
                                       WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")]


def test_a_revoked_connection_is_mailed_and_posted_signed_with_a_reconnect_link(
    vault_app, db, stub, smtp, receiver
):
    connection_id = make_connection(stub, subject="jane")
    secrets = secrets_of(connection_id, stub)
    revoke_at_provider(stub, connection_id)

    assert alerts_job(utcnow()) is True

    [mail] = smtp.messages
    assert smtp.logins == [True]
    assert mail["Subject"] == "[Token Vault] Reconnect needed: jane@example.com at Acme"
    assert mail["To"] == "ops@example.com, oncall@example.com"
    assert mail["From"] == "vault@example.com"
    plain = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    [link] = db.session.scalars(select(AccessLink)).all()
    for body in (plain, html):
        assert "jane@example.com" in body and "Acme" in body
        assert "Token revoked" in body and "reconnect" in body.lower()
        assert f"{BASE_URL}/connections/{connection_id}" in body
        assert f"{BASE_URL}/reconnect/" in body
        assert not any(secret in body for secret in secrets)
    url = next(w for w in plain.split() if w.startswith(f"{BASE_URL}/reconnect/"))
    assert reconnect_links.open_link(url.rsplit("/", 1)[1], utcnow()).id == link.id

    [hook] = receiver.requests
    assert hook.path == WEBHOOK_PATH
    payload = Webhook(WEBHOOK_SECRET).verify(hook.body, hook.headers)
    assert payload["type"] == NEEDS_RECONNECT
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["timestamp"].endswith("Z")
    assert set(payload["data"]) == {"connection", "reconnect_url"}
    assert payload["data"]["connection"] == {
        "id": connection_id, "provider": "acme", "account": "jane@example.com",
        "status": "needs_reconnect", "reason": payload["data"]["connection"]["reason"],
        "url": f"{BASE_URL}/connections/{connection_id}",
    }
    assert "Token revoked" in payload["data"]["connection"]["reason"]
    assert payload["data"]["reconnect_url"] == url  # one link, in every channel
    assert not any(secret in hook.body.decode() for secret in secrets)
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(hook.body, hook.headers)


def test_the_reconnect_link_is_stored_only_encrypted(vault_app, db, stub, smtp, receiver):
    connection_id = make_connection(stub)
    revoke_at_provider(stub, connection_id)
    delivery.dispatch(utcnow())
    [notification] = db.session.scalars(select(Notification)).all()
    ciphertext = notification.reconnect_url_ciphertext
    assert ciphertext is not None
    alerts_job(utcnow())
    url = receiver.requests[0].json()["data"]["reconnect_url"]
    token = url.rsplit("/", 1)[1]
    assert token.encode() not in ciphertext
    assert token not in str(notification.details) and token not in repr(notification)
    for table in ("notifications", "notification_deliveries", "delivery_attempts",
                  "audit_events", "reconnect_links"):
        rows = db.session.execute(text(f"SELECT * FROM {table}")).all()
        assert token not in str(rows), table


def test_the_encrypted_link_waits_only_until_every_channel_took_the_alert(
    vault_app, db, stub, smtp, receiver
):
    connection_id = make_connection(stub)
    revoke_at_provider(stub, connection_id)
    smtp.stop()
    now = utcnow()
    alerts_job(now)  # the webhook takes it; the e-mail waits for its retry
    assert len(receiver.requests) == 1
    assert db.session.scalars(select(Notification)).one().reconnect_url_ciphertext is not None
    smtp.start()
    alerts_job(now + timedelta(hours=2))
    assert len(smtp.messages) == 1 and "/reconnect/" in smtp.messages[0].as_string()
    db.session.expire_all()
    assert db.session.scalars(select(Notification)).one().reconnect_url_ciphertext is None


def test_prune_sweeps_a_link_left_on_an_alert_that_is_done(vault_app, db, stub, smtp, receiver):
    """Two last deliveries ending at once may each see the other pending: prune catches it."""
    connection_id = make_connection(stub)
    revoke_at_provider(stub, connection_id)
    alerts_job(utcnow())
    notification = db.session.scalars(select(Notification)).one()
    notification.reconnect_url_ciphertext = b"left behind"
    db.session.commit()
    delivery.prune(utcnow())
    assert db.session.scalars(select(Notification)).one().reconnect_url_ciphertext is None


def test_the_alert_is_written_with_the_state_change_or_not_at_all(vault_app, db, stub):
    connection_id = make_connection(stub)
    connection = load(connection_id)
    token_vault.mark_invalid(connection, "invalid_grant")
    db.session.rollback()
    assert db.session.scalar(select(func.count(Notification.id))) == 0
    token_vault.mark_invalid(load(connection_id), "invalid_grant")
    db.session.commit()
    assert db.session.scalars(select(Notification.event)).all() == [NEEDS_RECONNECT]


def test_running_the_worker_again_sends_nothing_twice(vault_app, db, stub, smtp, receiver):
    connection_id = make_connection(stub)
    revoke_at_provider(stub, connection_id)
    now = utcnow()
    for later in (0, 1, 90, 3600):
        assert alerts_job(now + timedelta(seconds=later)) is True
    # The engine asked again finds it still needs reconnecting: no new state, no new alert.
    assert refresh_now(load(connection_id), "system").outcome is Outcome.NEEDS_RECONNECT
    alerts_job(now + timedelta(hours=2))
    assert len(smtp.messages) == 1 and len(receiver.requests) == 1
    assert db.session.scalar(select(func.count(Notification.id))) == 1
    assert db.session.scalar(select(func.count(AccessLink.id))) == 1


def test_reconnecting_sends_recovered(vault_app, db, stub, smtp, receiver):
    connection_id = make_connection(stub)
    revoke_at_provider(stub, connection_id)
    alerts_job(utcnow())
    connection = load(connection_id)
    # As record_grant does on a reconnect: a new grant, the status, the deadline recomputed.
    token_vault.store(connection, TokenKind.REFRESH, stub.issue_refresh_token())
    connection.status = "active"
    connection.failure_count = 0
    db.session.commit()
    recompute_reconnect_by(utcnow())
    alerts_job(utcnow())
    events = [r.json()["type"] for r in receiver.requests]
    assert events == [NEEDS_RECONNECT, RECOVERED]
    assert smtp.messages[1]["Subject"] == (
        "[Token Vault] Working again: account-1@example.com at Acme"
    )
    assert receiver.requests[1].json()["data"]["reconnect_url"] is None


def test_refresh_failing_fires_once_after_the_threshold_then_recovered(
    vault_app, db, stub, smtp, receiver
):
    connection_id = make_connection(stub, expires_in=-60)
    stub.fail_next(503, "down for maintenance")
    assert refresh_now(load(connection_id), "system").outcome is Outcome.FAILED
    since = load(connection_id).failing_since
    assert since is not None
    alerts_job(since + timedelta(minutes=29))
    assert receiver.requests == []
    stub.fail_next(503, "still down")
    assert refresh_now(load(connection_id), "system").outcome is Outcome.FAILED
    assert load(connection_id).failing_since == since  # the run of failures goes on
    for minutes in (31, 45, 90):
        alerts_job(since + timedelta(minutes=minutes))
    [failing] = [r.json() for r in receiver.requests]
    assert failing["type"] == REFRESH_FAILING
    assert "2 attempts" in failing["data"]["connection"]["reason"]
    assert "503" in failing["data"]["connection"]["reason"]
    assert refresh_now(load(connection_id), "system").outcome is Outcome.REFRESHED
    assert load(connection_id).failing_since is None
    alerts_job(utcnow() + timedelta(hours=2))
    assert [r.json()["type"] for r in receiver.requests] == [REFRESH_FAILING, RECOVERED]


def test_a_short_run_of_failures_sends_nothing(vault_app, db, stub, receiver):
    connection_id = make_connection(stub, expires_in=-60)
    stub.fail_next(503)
    refresh_now(load(connection_id), "system")
    assert refresh_now(load(connection_id), "system").outcome is Outcome.REFRESHED
    alerts_job(utcnow() + timedelta(hours=2))
    assert receiver.requests == []


def test_expiring_credentials_nothing_renews(vault_app, db, stub, receiver):
    now = utcnow()
    key_id = make_api_key_connection("voicenter", "office", "vc-api-key-secret-1234")
    token = token_vault.token(load(key_id), TokenKind.API_KEY)
    token.expires_at = now + timedelta(days=3)
    refresh_id = make_connection(stub, subject="sliding")
    token_vault.token(load(refresh_id), TokenKind.REFRESH).expires_at = now + timedelta(days=6)
    later_id = make_connection(stub, subject="later")
    token_vault.token(load(later_id), TokenKind.REFRESH).expires_at = now + timedelta(days=30)
    db.session.commit()
    recompute_reconnect_by(now)  # as storing the values does (vault/grants/limits.py)

    found = rules.expiring_connections(now, timedelta(days=7))
    assert [(e.connection.id, e.reason) for e in found] == [
        (key_id, "the pasted key expires"), (refresh_id, "the refresh token expires")
    ]
    for _ in range(3):
        alerts_job(now)
    bodies = [r.json() for r in receiver.requests]
    assert [b["data"]["connection"]["id"] for b in bodies] == [key_id, refresh_id]
    assert {b["type"] for b in bodies} == {"connection.expiring"}
    assert "the pasted key expires" in bodies[0]["data"]["connection"]["reason"]
    assert "vc-api-key-secret-1234" not in str(bodies)


def test_five_breakages_of_one_provider_are_one_digest_for_people(
    vault_app, db, stub, smtp, receiver
):
    ids = [make_connection(stub, subject=f"user{n}") for n in range(6)]
    other = make_connection(stub, provider="acme-post", subject="elsewhere")
    for connection_id in [*ids, other]:
        revoke_at_provider(stub, connection_id)
    alerts_job(utcnow())

    subjects = sorted(m["Subject"] for m in smtp.messages)
    assert subjects == [
        "[Token Vault] 6 Acme connections need attention",
        "[Token Vault] Reconnect needed: elsewhere@example.com at Acme-Post",
    ]
    digest = next(m for m in smtp.messages if "6 Acme" in m["Subject"])
    plain = digest.get_body(("plain",)).get_content()
    for n, connection_id in enumerate(ids):
        assert f"user{n}@example.com" in plain
        assert f"{BASE_URL}/connections/{connection_id}" in plain
    assert plain.count(f"{BASE_URL}/reconnect/") == 6
    # Machines get every event on its own, with the same links.
    assert len(receiver.requests) == 7
    assert {Webhook(WEBHOOK_SECRET).verify(r.body, r.headers)["type"] for r in receiver.requests} \
        == {NEEDS_RECONNECT}


def test_channels_down_then_up_deliver_everything_once(vault_app, db, stub, smtp, receiver):
    ids = [make_connection(stub, subject=f"user{n}") for n in range(3)]
    for connection_id in ids:
        revoke_at_provider(stub, connection_id)
    smtp.stop()
    receiver.status = 503
    now = utcnow()
    assert alerts_job(now) is False
    attempts = db.session.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id)).all()
    # One try per channel, then the channel counts as down for the rest of the run.
    assert sorted(a.channel for a in attempts) == ["email", "webhook"]
    assert not any(a.ok for a in attempts)
    assert all(a.error and SMTP_PASSWORD not in a.error and WEBHOOK_PATH not in a.error
               for a in attempts)
    assert "HTTP 503" in next(a.error for a in attempts if a.channel == "webhook")

    # A restart: a new app, nothing in memory; the outbox is all there is.
    smtp.start()
    receiver.status = 200
    alerts_job(now + timedelta(minutes=2))
    alerts_job(now + timedelta(hours=3))
    assert len(smtp.messages) == 3 and len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 3
    statuses = db.session.scalars(select(NotificationDelivery.status)).all()
    assert statuses == ["delivered"] * 6


def test_back_off_grows_while_a_channel_stays_down(vault_app, db, stub, receiver, smtp):
    connection_id = make_connection(stub)
    revoke_at_provider(stub, connection_id)
    receiver.status = 503
    now = utcnow() + timedelta(hours=1)  # ahead of the clock: each attempt happens at `moment`
    delivery.dispatch(now)
    gaps = []
    moment = now
    for _ in range(4):
        delivery.deliver_pending(moment)
        row = db.session.scalar(
            select(NotificationDelivery).where(NotificationDelivery.channel == "webhook")
        )
        gaps.append(row.next_attempt_at - moment)
        moment = row.next_attempt_at
        db.session.rollback()
    assert gaps == [timedelta(seconds=30 * 2**n) for n in range(4)]


def test_a_client_secret_about_to_expire_is_alerted_once(vault_app, db, smtp, receiver,
                                                          monkeypatch):
    registry = vault_app.extensions["providers"]
    acme = registry.get("acme")
    expiring = dataclasses.replace(
        acme, client_secret_expires_at=(utcnow() + timedelta(days=20)).date()
    )
    monkeypatch.setitem(registry._providers, "acme", expiring)
    for _ in range(2):
        alerts_job(utcnow())
    bodies = [r.json() for r in receiver.requests]
    assert [b["type"] for b in bodies] == ["provider.client_secret_expiring"]
    provider = bodies[0]["data"]["provider"]
    assert provider["key"] == "acme"
    assert provider["reason"].startswith("Acme's client secret expires in ")
    assert smtp.messages[0]["Subject"].startswith("[Token Vault] Client secret expiring")
    assert acme.client_secret not in str(bodies) + smtp.messages[0].as_string()
