"""Audit retention: old sealed rows deleted in small batches, the rest of the chain verifying."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from tests.support.audit_rows import add_events, run_sql
from vault.extensions import db
from vault.models import AuditChainCheckpoint, AuditEvent, utcnow
from vault.services.audit_chain import ChainBroken, link_hash, seal, seal_audit_chain, verify
from vault.services.audit_retention import apply_audit_retention, apply_retention

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True),
    pytest.mark.shared_postgres_database,
]

NOW = utcnow()
OLD = NOW - timedelta(days=500)


def remaining() -> list[str]:
    return list(db.session.scalars(select(AuditEvent.detail).order_by(AuditEvent.id)))


@pytest.fixture
def deletes(app):
    """A list that grows by one for each DELETE sent to audit_events."""
    sent = []

    def spot(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM AUDIT_EVENTS"):
            sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", spot)
    yield sent
    event.remove(db.engine, "before_cursor_execute", spot)


def test_old_sealed_rows_go_in_batches_and_the_rest_still_verifies(app, deletes):
    add_events(10, occurred_at=OLD, detail="old")
    add_events(3, occurred_at=NOW - timedelta(days=10), detail="recent")
    seal()

    assert apply_retention(NOW, days=400, batch_size=3) == 10

    assert len(deletes) == 4  # 3 + 3 + 3 + 1, each in a transaction of its own
    assert [detail for detail in remaining() if detail != "deleted 10 event(s) older than 400 "
            "day(s)"] == ["recent"] * 3  # and the audit.retention event of this run
    (checkpoint,) = db.session.scalars(select(AuditChainCheckpoint)).all()
    assert (checkpoint.through_seq, checkpoint.through_id, checkpoint.deleted) == (10, 10, 10)
    retention_event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "audit.retention")
    ).one()
    assert retention_event.actor == "system"
    seal()
    result = verify()
    assert (result.ok, result.verified) == (True, 4)


def test_unsealed_rows_are_never_deleted(app):
    add_events(4, occurred_at=OLD, detail="sealed")
    seal()
    add_events(3, occurred_at=OLD, detail="unsealed")  # written, not sealed yet
    assert apply_retention(NOW, days=400) == 4
    assert remaining().count("unsealed") == 3
    seal()
    assert verify().ok


def test_the_job_reads_the_retention_setting_and_repeats_harmlessly(app, make_app):
    add_events(3, occurred_at=NOW - timedelta(days=40), detail="forty days")
    add_events(2, occurred_at=NOW - timedelta(days=5), detail="five days")
    assert seal_audit_chain(NOW) is True
    assert apply_audit_retention(NOW) is True
    assert remaining().count("forty days") == 3  # the default keeps 400 days

    short = make_app(VAULT_AUDIT_RETENTION_DAYS="30")
    with short.app_context():
        assert apply_audit_retention(NOW) is True
        assert apply_audit_retention(NOW) is True
        assert remaining().count("forty days") == 0
        assert remaining().count("five days") == 2
        assert len(db.session.scalars(select(AuditChainCheckpoint)).all()) == 1
        seal()
        assert verify().ok
        db.session.remove()


def test_retention_stops_at_a_tampered_row_and_keeps_the_evidence(app):
    add_events(6, occurred_at=OLD)
    seal()
    run_sql("UPDATE audit_events SET detail = 'rewritten' WHERE id = 4")
    with pytest.raises(ChainBroken, match="row #4 does not match its seal"):
        apply_retention(NOW, days=400, batch_size=2)
    assert db.session.scalar(select(func.min(AuditEvent.id))) == 3  # 1, 2 went; 3 on remain
    assert apply_audit_retention(NOW) is False
    assert verify().broken_id == 4


def test_rows_deleted_behind_retentions_back_break_the_chain(app):
    add_events(8, occurred_at=OLD)
    seal()
    run_sql("DELETE FROM audit_events WHERE id <= 3")
    result = verify()
    assert not result.ok
    assert result.problem == ("row #4 is link 4 where link 1 was expected: sealed rows before it "
                              "were deleted")


def test_a_forged_checkpoint_is_caught(app):
    add_events(8, occurred_at=OLD)
    add_events(2, occurred_at=NOW)
    seal()
    apply_retention(NOW, days=400, batch_size=100)
    assert verify().ok
    # Delete one more row, and move the checkpoint on to match (the chain hash is no secret).
    checkpoint = db.session.scalars(select(AuditChainCheckpoint)).one()
    row = db.session.execute(select(AuditEvent.__table__).where(AuditEvent.id == 9)).one()
    moved_on = link_hash(checkpoint.through_hash, row._mapping)
    run_sql("UPDATE audit_chain_checkpoints SET through_seq = 9, through_id = 9, "
            "through_hash = :moved_on", moved_on=moved_on)
    run_sql("DELETE FROM audit_events WHERE id = 9")
    result = verify()
    assert not result.ok
    assert "retention checkpoint #1 is not authentic" in result.problem


def test_cli_applies_retention(app, runner):
    add_events(2, occurred_at=OLD)
    seal()
    result = runner.invoke(args=["vault", "audit-retention"])
    assert result.exit_code == 0, result.output
    assert "Deleted 2 sealed audit event(s) older than 400 day(s)." in result.output


def test_verification_goes_on_when_retention_runs_meanwhile(app):
    add_events(30, occurred_at=OLD)
    add_events(5, occurred_at=NOW - timedelta(days=1))
    seal()
    runs = []

    def retention_after_the_first_batch(count):
        if not runs:
            runs.append(apply_retention(NOW, days=400))

    result = verify(batch_size=10, progress=retention_after_the_first_batch)
    assert runs == [30]
    assert (result.ok, result.problem) == (True, None)
    assert result.verified == 10 + 5
