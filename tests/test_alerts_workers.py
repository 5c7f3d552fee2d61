"""Two workers at once, each with its own app and database connection, send every alert
exactly once: the outbox's dispatch and delivery claims are in the database."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from tests.support.alert_fixtures import WEBHOOK_SECRET
from vault.extensions import db
from vault.models import Connection, DeliveryAttempt, Notification, utcnow
from vault.tokens.store import token_vault
from vault.worker.jobs import alerts_job

pytestmark = pytest.mark.parametrize("database_url", ["postgresql", "sqlite"], indirect=True)

WORKERS = 2
CYCLES = 3


@pytest.fixture
def app_config(app_config, alert_settings):
    return {**app_config, **alert_settings}


def break_connections() -> int:
    """Six connections of one provider (one digest for people) and six of six others."""
    pairs = [("acme", f"a{n}") for n in range(6)] + [(f"other{n}", "b") for n in range(6)]
    connections = [
        Connection(provider=p, account_subject=s, account_email=f"{s}@{p}.example")
        for p, s in pairs
    ]
    db.session.add_all(connections)
    db.session.commit()
    for connection in connections:
        token_vault.mark_invalid(connection, "invalid_grant")
    db.session.commit()
    return len(connections)


def test_two_workers_at_once_send_each_alert_exactly_once(app, make_app, smtp, receiver):
    alerts = break_connections()
    apps = [make_app() for _ in range(WORKERS)]
    start = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def worker(application):
        try:
            with application.app_context():
                start.wait()
                for _ in range(CYCLES):
                    alerts_job(utcnow())
                db.session.remove()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(a,)) for a in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    # People: one digest for acme and one e-mail per other provider; machines: every alert.
    mail_ids = Counter(m["Message-ID"] for m in smtp.messages)
    assert len(mail_ids) == 1 + 6 and set(mail_ids.values()) == {1}
    assert sum("6 acme connections" in m["Subject"] for m in smtp.messages) == 1
    hook_ids = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert len(hook_ids) == alerts and set(hook_ids.values()) == {1}
    for request in receiver.requests:
        Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    db.session.expire_all()
    assert db.session.scalar(select(func.count(Notification.id))) == alerts + 1  # + the digest
    attempts = db.session.scalar(select(func.count(DeliveryAttempt.id)))
    assert attempts == 7 + alerts  # no delivery tried twice
