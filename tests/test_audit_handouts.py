"""VAULT_AUDIT_HANDOUTS=hourly: one audit row per service key, connection and hour."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from tests.support.refresh_fixtures import make_connection
from vault import audit
from vault.extensions import db
from vault.models import AuditEvent, AuditHandoutCount, utcnow
from vault.services import service_keys
from vault.services.audit_chain import seal_audit_chain, verify
from vault.services.audit_handouts import fold_handouts

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True),
    pytest.mark.shared_postgres_database,
]

TEN_PAST = datetime(2026, 12, 3, 9, 10, tzinfo=timezone.utc)


@pytest.fixture
def app_config(app_config):
    return {**app_config, "VAULT_AUDIT_HANDOUTS": "hourly"}


def handouts() -> list[AuditEvent]:
    statement = (
        select(AuditEvent).where(AuditEvent.action == "token.handed_out").order_by(AuditEvent.id)
    )
    return list(db.session.scalars(statement))


def test_hand_outs_through_the_api_become_one_row_when_the_hour_is_over(vault_app, client, stub):
    _, key = service_keys.create_key("billing", ["acme"], {"acme"})
    db.session.commit()
    connection_id = make_connection(stub, expires_in=3600)
    for _ in range(3):
        response = client.get(f"/api/v1/connections/{connection_id}/access-token",
                              headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    assert handouts() == []
    assert db.session.scalar(select(AuditHandoutCount.count)) == 3

    now = utcnow()
    assert fold_handouts(now) == 0  # the hour is not over yet
    assert seal_audit_chain(now + timedelta(hours=1, minutes=2)) is True
    (event,) = handouts()
    hour = now.replace(minute=0, second=0, microsecond=0)
    assert (event.actor, event.connection_id, event.target) == (
        "service:billing", connection_id, "acme"
    )
    assert event.occurred_at == hour
    assert event.detail == (f"3 hand-out(s) from {hour:%Y-%m-%d %H:%M} to "
                            f"{hour + timedelta(hours=1):%H:%M} UTC")
    assert event.chain_seq is not None  # sealed in the same run
    assert db.session.scalars(select(AuditHandoutCount)).all() == []
    assert verify().ok


def test_one_row_per_key_connection_and_hour(app, monkeypatch):
    for minutes, actor, connection_id in [(0, "service:a", 1), (30, "service:a", 1),
                                          (5, "service:b", 1), (8, "service:a", 2),
                                          (60, "service:a", 1), (125, "service:a", 1)]:
        monkeypatch.setattr(audit, "utcnow", lambda m=minutes: TEN_PAST + timedelta(minutes=m))
        audit.handed_out(target="acme", connection_id=connection_id, actor=actor)
        db.session.commit()

    # At 11:00:30 the 9 o'clock hour is over; 10 o'clock is too, but within the minute's margin.
    assert fold_handouts(datetime(2026, 12, 3, 11, 0, 30, tzinfo=timezone.utc)) == 3
    rows = [(event.actor, event.connection_id, event.detail.split()[0]) for event in handouts()]
    assert rows == [("service:a", 1, "2"), ("service:a", 2, "1"), ("service:b", 1, "1")]
    assert fold_handouts(datetime(2026, 12, 3, 11, 1, 0, tzinfo=timezone.utc)) == 1
    assert fold_handouts(datetime(2026, 12, 3, 13, 0, tzinfo=timezone.utc)) == 1
    assert sum(int(event.detail.split()[0]) for event in handouts()) == 6
