"""/metrics: who may read it, what it counts, and that no label carries a secret or e-mail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from tests.support.refresh_fixtures import (
    OLD_ACCESS_TOKEN,
    both_backends,
    make_connection,
)
from vault.models import Connection, Token, TokenKind, utcnow
from vault.services import service_keys
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database  # one database for the module

METRICS_TOKEN = "metrics-token-0123456789-abcdefghijklmnop"
REMOTE = {"REMOTE_ADDR": "203.0.113.7"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.status_code
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert response.headers["Cache-Control"] == "no-store"
    return response.get_data(as_text=True)


def new_key(db, name: str = "billing") -> str:
    _, key = service_keys.create_key(name, [], {"acme"})
    db.session.commit()
    return key


def hand_out(client, key: str, connection_id: int):
    return client.get(f"/api/v1/connections/{connection_id}/access-token",
                      headers={"Authorization": f"Bearer {key}"})


# -- who may read it -------------------------------------------------------------------------


def test_without_a_token_only_direct_loopback_requests_are_answered(app, client):
    assert client.get("/metrics").status_code == 200  # the test client comes from 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    assert client.get("/metrics", environ_base=REMOTE).status_code == 404
    # A reverse proxy on the same host makes every visitor look local: forwarded is refused.
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        assert client.get("/metrics", headers={header: "203.0.113.7"}).status_code == 404
    # The site's plain "Not Found" page: nothing says a token would open it.
    refused = client.get("/metrics", environ_base=REMOTE).get_data(as_text=True)
    assert "Not Found" in refused and "metrics" not in refused.lower()
    assert "Bearer" not in refused and "authorization" not in refused.lower()


def test_with_a_token_only_its_bearer_reads_from_anywhere(make_app, app):
    client = make_app(VAULT_METRICS_TOKEN=METRICS_TOKEN).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token"},
                    {"Authorization": f"Basic {METRICS_TOKEN}"},
                    {"Authorization": f"Bearer {METRICS_TOKEN}x"}):
        response = client.get("/metrics", headers=headers)  # loopback too needs the token
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert METRICS_TOKEN not in response.get_data(as_text=True)
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                        environ_base=REMOTE)
    assert answer.status_code == 200 and "token_vault_connections" in answer.get_data(True)


def test_metrics_need_no_staff_session_and_set_no_cookie(app, client):
    response = client.get("/metrics")
    assert response.status_code == 200 and "Set-Cookie" not in response.headers


def test_a_short_metrics_token_stops_start_up(make_app, app):
    with pytest.raises(SystemExit, match="VAULT_METRICS_TOKEN is too short") as stopped:
        make_app(VAULT_METRICS_TOKEN="short-token")
    assert "short-token" not in str(stopped.value)


# -- what it counts --------------------------------------------------------------------------


@both_backends
def test_refreshes_hand_outs_and_api_errors_are_counted(vault_app, db, client, stub):
    key = new_key(db)
    due = make_connection(stub, subject="due", expires_in=60)  # within the refresh buffer
    revoked = make_connection(stub, subject="revoked", refresh_token="rt-revoked-by-the-user")
    flaky = make_connection(stub, subject="flaky", expires_in=60)

    assert hand_out(client, key, due).status_code == 200  # refreshed, then handed out
    assert hand_out(client, key, revoked).status_code == 409  # needs_reconnect
    stub.fail_next(503)
    assert hand_out(client, key, flaky).status_code == 200  # transient; still valid: handed out
    assert hand_out(client, key, flaky).status_code == 200  # backing off: no provider call
    assert hand_out(client, key, 999999).status_code == 404
    assert client.get("/api/v1/connections", headers={"Authorization": "Bearer nope"}
                      ).status_code == 401

    text = scrape(client)
    assert value(text, "token_vault_refresh_total", provider="acme", outcome="refreshed") == 1
    assert value(text, "token_vault_refresh_total", provider="acme",
                 outcome="needs_reconnect") == 1
    assert value(text, "token_vault_refresh_total", provider="acme", outcome="transient") == 1
    assert value(text, "token_vault_refresh_duration_seconds_count", provider="acme") == 3
    assert value(text, "token_vault_handouts_total", service_key="billing") == 3
    assert value(text, "token_vault_api_errors_total", error="needs_reconnect") == 1
    assert value(text, "token_vault_api_errors_total", error="not_found") == 1
    assert value(text, "token_vault_api_errors_total", error="unauthorized") == 1

    # No label or value carries a secret, an account or an e-mail address.
    secrets = [key, key[:10], OLD_ACCESS_TOKEN, "rt-revoked-by-the-user", stub.client_secret,
               *stub.issued_access_tokens]
    assert not [secret for secret in secrets if secret in text]
    assert "@" not in text and "example.com" not in text
    for subject in ("due", "revoked", "flaky"):
        assert f'"{subject}"' not in text


def test_counts_belong_to_their_app(make_app, app, db, client):
    other = make_app().test_client()
    client.get("/api/v1/connections")  # 401 in this app only
    assert value(scrape(client), "token_vault_api_errors_total", error="unauthorized") == 1
    assert value(scrape(other), "token_vault_api_errors_total", error="unauthorized") is None


# -- the database gauges ---------------------------------------------------------------------


@both_backends
def test_connection_and_expiry_gauges_come_from_the_database(vault_app, db, client, stub):
    soon = make_connection(stub, subject="soon", expires_in=30 * 60)
    make_connection(stub, subject="later", expires_in=5 * 3600)
    make_connection(stub, subject="expired", expires_in=-60)  # expired is not "expiring"
    make_connection(stub, subject="unknown", expires_in=None)  # nor is an unknown expiry
    revoked = make_connection(stub, subject="revoked", expires_in=10 * 60)
    make_connection(stub, provider="acme-post", subject="post", expires_in=20 * 3600)
    gone = make_connection(stub, provider="acme-post", subject="gone", expires_in=20 * 3600)
    db.session.execute(update(Connection).where(Connection.id == revoked)
                       .values(status="needs_reconnect"))
    db.session.execute(update(Token).where(Token.connection_id == revoked)
                       .values(is_valid=False))  # a refused token is not counted as expiring
    db.session.execute(update(Connection).where(Connection.id == gone)
                       .values(status="disconnected"))
    db.session.execute(update(Token).where(Token.connection_id == gone,
                                           Token.kind == TokenKind.ACCESS.value)
                       .values(expires_at=utcnow() + timedelta(days=3)))
    db.session.commit()
    assert token_vault.token(db.session.get(Connection, soon), TokenKind.ACCESS) is not None

    text = scrape(client)
    connections = {labels: count for (name, labels), count in samples(text).items()
                   if name == "token_vault_connections"}
    assert connections == {
        frozenset({"provider": "acme", "status": "active"}.items()): 4,
        frozenset({"provider": "acme", "status": "needs_reconnect"}.items()): 1,
        frozenset({"provider": "acme", "status": "error"}.items()): 0,
        frozenset({"provider": "acme", "status": "disconnected"}.items()): 0,
        frozenset({"provider": "acme-post", "status": "active"}.items()): 1,
        frozenset({"provider": "acme-post", "status": "needs_reconnect"}.items()): 0,
        frozenset({"provider": "acme-post", "status": "error"}.items()): 0,
        frozenset({"provider": "acme-post", "status": "disconnected"}.items()): 1,
    }
    assert value(text, "token_vault_tokens_expiring", provider="acme", within="1h") == 1
    assert value(text, "token_vault_tokens_expiring", provider="acme", within="24h") == 2
    assert value(text, "token_vault_tokens_expiring", provider="acme-post", within="1h") == 0
    assert value(text, "token_vault_tokens_expiring", provider="acme-post", within="24h") == 1


def test_an_empty_vault_scrapes_cleanly(app, client):
    text = scrape(client)
    assert "# TYPE token_vault_connections gauge" in text
    assert "# TYPE token_vault_handouts_total counter" in text
    assert "# TYPE token_vault_refresh_duration_seconds histogram" in text


def test_worker_and_outbox_gauges_come_from_the_database(vault_app, db, client):
    from vault.models import Notification, NotificationDelivery
    from vault.worker import heartbeat

    text = scrape(client)
    assert "token_vault_notifications_pending 0.0" in text
    assert "\ntoken_vault_worker_last_run_timestamp_seconds " not in text  # no worker yet

    beat_at = utcnow().replace(microsecond=0)
    heartbeat.beat("host:1", started_at=beat_at, now=beat_at, interval_seconds=60)
    alert = Notification(event="connection.needs_reconnect", dedupe_key="k", provider="acme",
                         details={"provider": "acme", "reason": "refused"})
    db.session.add(alert)
    db.session.flush()
    db.session.add_all([
        NotificationDelivery(notification_id=alert.id, channel="email"),
        NotificationDelivery(notification_id=alert.id, channel="webhook"),
        NotificationDelivery(notification_id=alert.id, channel="slack", status="delivered"),
    ])
    db.session.commit()

    values = {name: count for (name, labels), count in samples(scrape(client)).items()}
    assert values["token_vault_worker_last_run_timestamp_seconds"] == beat_at.timestamp()
    assert values["token_vault_notifications_pending"] == 2
