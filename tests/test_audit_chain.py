"""The tamper-evident audit chain: sealing, verification, tampering caught, key rotation."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from tests.conftest import TEST_ENCRYPTION_SECRET
from tests.support.audit_rows import add_events, run_sql, sealed_ids
from vault import audit
from vault.extensions import db
from vault.models import AuditChainState, AuditEvent, utcnow
from vault.services.audit_chain import chain_state, reseal, seal, seal_audit_chain, verify

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True),
    pytest.mark.shared_postgres_database,
]

OTHER_SECRET = "another-encryption-secret-0123456789abcdef"


def verify_cli(runner):
    return runner.invoke(args=["vault", "audit-verify"])


def test_sealing_links_every_row_and_verification_passes(app, runner):
    add_events(25)
    result = runner.invoke(args=["vault", "audit-seal"])
    assert result.exit_code == 0, result.output
    assert "Sealed 25 audit event(s)." in result.output
    head = chain_state()
    assert f"anchor 25:{bytes(head.head_hash).hex()}" in result.output  # for operators to keep

    seqs = db.session.scalars(select(AuditEvent.chain_seq).order_by(AuditEvent.id)).all()
    assert seqs == list(range(1, 26))
    outcome = verify_cli(runner)
    assert outcome.exit_code == 0, outcome.output
    assert "25 event(s) verified" in outcome.output
    assert runner.invoke(args=["vault", "audit-seal"]).output.startswith("Sealed 0 ")


def test_rows_written_after_sealing_wait_unsealed_and_are_linked_by_the_next_run(app):
    add_events(3)
    seal()
    audit.insert_now("token.handed_out", actor="service:billing", connection_id=4)
    db.session.commit()
    assert verify().unsealed == 1
    assert seal().sealed == 1
    result = verify()
    assert (result.ok, result.verified, result.unsealed) == (True, 4, 0)


def test_a_row_committed_late_with_a_lower_id_is_sealed_at_the_end_of_the_chain(app):
    # PostgreSQL hands out ids at INSERT but rows become visible at COMMIT, in any order.
    add_events(3)
    run_sql("INSERT INTO audit_events (id, occurred_at, actor, action, outcome) "
            "VALUES (10, CURRENT_TIMESTAMP, 'system', 'late.one', 'success')")
    seal()
    run_sql("INSERT INTO audit_events (id, occurred_at, actor, action, outcome) "
            "VALUES (7, CURRENT_TIMESTAMP, 'system', 'late.two', 'success')")
    seal()
    assert sealed_ids() == [1, 2, 3, 10, 7]
    assert verify().ok


def test_the_audit_page_shows_how_far_the_chain_was_verified(app, viewer_client):
    add_events(4)
    assert "has not been verified yet" in viewer_client.get("/audit").get_data(as_text=True)
    head = seal().head_id  # the four, after the viewer's sign-in
    verify()
    page = viewer_client.get("/audit").get_data(as_text=True)
    assert f"Chain verified up to #{head} on" in page

    run_sql("UPDATE audit_events SET detail = 'nothing to see' WHERE id = :id", id=head - 1)
    verify()
    page = viewer_client.get("/audit").get_data(as_text=True)
    assert f"Chain broken at #{head - 1}" in page
    assert f"row #{head - 1} does not match its seal" in page


# Tampering by someone with SQL access: (rows sealed, statements run, what verify must say).
TAMPERING = [
    pytest.param(10, ["UPDATE audit_events SET actor = 'someone-else' WHERE id = 6"],
                 "row #6 does not match its seal", id="edited row"),
    pytest.param(10, ["DELETE FROM audit_events WHERE id = 4"],
                 "row #5 is link 5 where link 4 was expected", id="deleted row"),
    pytest.param(10, ["DELETE FROM audit_events WHERE id > 8"],
                 "the chain ends at link 8 but was sealed up to link 10",
                 id="deleted newest rows"),
    pytest.param(6, [
        # Make room at link 4 and slip a row in, reusing the MAC of the row it displaces.
        "UPDATE audit_events SET chain_seq = chain_seq + 1000 WHERE chain_seq >= 4",
        "UPDATE audit_events SET chain_seq = chain_seq - 999 WHERE chain_seq >= 1000",
        "INSERT INTO audit_events (id, occurred_at, actor, action, outcome, chain_seq, chain_mac,"
        " chain_key_id) SELECT 100, occurred_at, 'admin@example.com', 'user.deleted', 'success',"
        " 4, chain_mac, chain_key_id FROM audit_events WHERE id = 4",
    ], "row #100 does not match its seal", id="inserted row"),
    pytest.param(3, [
        "INSERT INTO audit_events (id, occurred_at, actor, action, outcome, chain_seq, chain_mac,"
        " chain_key_id) SELECT 50, occurred_at, actor, action, outcome, 4, chain_mac,"
        " chain_key_id FROM audit_events WHERE id = 3",
    ], "row #50 does not match its seal", id="appended row"),
    pytest.param(8, [
        "UPDATE audit_events SET chain_seq = 1000 WHERE id = 3",
        "UPDATE audit_events SET chain_seq = 3 WHERE id = 4",
        "UPDATE audit_events SET chain_seq = 4 WHERE id = 3",
    ], "row #4 does not match its seal", id="swapped rows"),
    pytest.param(8, [
        "UPDATE audit_events SET detail = CASE WHEN id = 6 THEN 'event 4' ELSE 'event 5' END"
        " WHERE id IN (5, 6)",
    ], "row #5 does not match its seal", id="swapped contents"),
]


@pytest.mark.parametrize(("rows", "statements", "problem"), TAMPERING)
def test_tampering_breaks_the_chain_at_the_first_broken_link(app, runner, rows, statements,
                                                              problem):
    add_events(rows)
    seal()
    for statement in statements:
        run_sql(statement)
    result = verify_cli(runner)
    assert result.exit_code == 1
    assert f"Audit chain broken: {problem}" in result.output


def test_a_broken_link_is_stored_with_how_far_the_chain_verified(app, runner):
    add_events(10)
    seal()
    run_sql("UPDATE audit_events SET actor = 'someone-else' WHERE id = 6")
    assert "5 event(s) verified before the break" in verify_cli(runner).output
    state = db.session.get(AuditChainState, 1, populate_existing=True)
    assert (state.verified_ok, state.broken_id, state.verified_id) == (False, 6, 5)


def test_an_edited_timestamp_breaks_the_chain(app, runner):
    add_events(4)
    seal()
    run_sql("UPDATE audit_events SET occurred_at = occurred_at - INTERVAL '1 day' WHERE id = 3"
            if db.engine.dialect.name == "postgresql" else
            "UPDATE audit_events SET occurred_at = '2020-01-01 00:00:00.000000' WHERE id = 3")
    assert "row #3 does not match its seal" in verify_cli(runner).output


def test_the_sealer_refuses_to_fork_the_chain(app):
    add_events(3)
    seal()
    run_sql("UPDATE audit_events SET chain_seq = 4 WHERE id = 3")  # link 4 taken behind its back
    add_events(1)
    assert seal_audit_chain(utcnow()) is False


def test_links_sealed_before_a_key_rotation_still_verify(app, make_app):
    add_events(3)
    seal()
    old_key = db.session.scalar(select(AuditEvent.chain_key_id).where(AuditEvent.id == 1))
    rotated = make_app(ENCRYPTION_SECRET=OTHER_SECRET,
                       ENCRYPTION_SECRET_PREVIOUS=TEST_ENCRYPTION_SECRET)
    with rotated.app_context():
        add_events(2)
        seal()
        keys = db.session.scalars(select(AuditEvent.chain_key_id).order_by(AuditEvent.id)).all()
        assert keys[:3] == [old_key] * 3 and keys[3] == keys[4] != old_key
        result = verify()
        assert (result.ok, result.verified) == (True, 5)
        db.session.remove()

    forgotten = make_app(ENCRYPTION_SECRET=OTHER_SECRET, ENCRYPTION_SECRET_PREVIOUS="")
    with forgotten.app_context():
        result = verify()
        assert not result.ok
        assert f"row #1 was sealed with key {old_key}, which is not in the key ring" in (
            result.problem
        )
        db.session.remove()


def test_another_secret_cannot_forge_or_verify_the_chain(app, make_app):
    add_events(2)
    stranger = make_app(ENCRYPTION_SECRET=OTHER_SECRET, ENCRYPTION_SECRET_PREVIOUS="")
    with stranger.app_context():
        seal()  # someone with the database but another secret seals (or reseals) rows
        db.session.remove()
    assert not verify().ok


def test_concurrent_sealers_never_fork_the_chain(app):
    sealers, errors, done = [], [], threading.Event()

    def keep_sealing():
        with app.app_context():
            try:
                while not done.is_set():
                    seal(batch_size=7)
                seal(batch_size=7)
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)
            finally:
                db.session.remove()

    for _ in range(3):
        sealers.append(threading.Thread(target=keep_sealing))
        sealers[-1].start()
    for _ in range(30):
        add_events(5)
    done.set()
    for sealer in sealers:
        sealer.join()
    assert errors == []
    seal()
    seqs = db.session.scalars(select(AuditEvent.chain_seq).order_by(AuditEvent.chain_seq)).all()
    assert seqs == list(range(1, 151))
    assert verify().ok
    assert chain_state().head_seq == 150


def test_after_a_rotation_reseal_lets_the_old_secret_go(app, make_app, runner):
    add_events(5)
    seal()
    rotated = make_app(ENCRYPTION_SECRET=OTHER_SECRET,
                       ENCRYPTION_SECRET_PREVIOUS=TEST_ENCRYPTION_SECRET)
    with rotated.app_context():
        add_events(2)
        seal()
        result = rotated.test_cli_runner().invoke(args=["vault", "audit-reseal"])
        assert result.exit_code == 0, result.output
        assert "Resealed 5 audit link(s)" in result.output
        assert reseal() == 0  # nothing left: rerunning is harmless
        db.session.remove()
    new_only = make_app(ENCRYPTION_SECRET=OTHER_SECRET, ENCRYPTION_SECRET_PREVIOUS="")
    with new_only.app_context():
        assert len(set(db.session.scalars(select(AuditEvent.chain_key_id)))) == 1
        result = verify()
        assert (result.ok, result.verified) == (True, 7)
        db.session.remove()


def test_reseal_does_not_launder_a_tampered_row(app, make_app):
    add_events(6)
    seal()
    run_sql("UPDATE audit_events SET detail = 'rewritten' WHERE id = 4")
    rotated = make_app(ENCRYPTION_SECRET=OTHER_SECRET,
                       ENCRYPTION_SECRET_PREVIOUS=TEST_ENCRYPTION_SECRET)
    with rotated.app_context():
        result = rotated.test_cli_runner().invoke(args=["vault", "audit-reseal"])
        assert result.exit_code == 1
        assert "row #4 does not match its seal" in result.output
        assert verify().broken_id == 4
        db.session.remove()


def test_an_anchored_head_catches_a_truncation_the_database_hides(app, runner):
    add_events(6)
    output = runner.invoke(args=["vault", "audit-seal"]).output
    anchor = output.split("anchor ")[1].split()[0]
    assert runner.invoke(args=["vault", "audit-verify", "--anchor", anchor]).exit_code == 0

    # Drop the newest two rows and rewind the recorded head to match: invisible without an anchor.
    head = db.session.scalar(select(AuditEvent.id).where(AuditEvent.chain_seq == 4))
    run_sql("DELETE FROM audit_events WHERE chain_seq > 4")
    run_sql("UPDATE audit_chain_state SET head_seq = 4, head_id = :id", id=head)
    assert verify_cli(runner).exit_code == 0
    result = runner.invoke(args=["vault", "audit-verify", "--anchor", anchor])
    assert result.exit_code == 1
    assert "the chain ends at link 4 but was sealed up to link 6" in result.output


def test_an_anchor_must_be_link_and_hash(app, runner):
    result = runner.invoke(args=["vault", "audit-verify", "--anchor", "6:nothex"])
    assert result.exit_code == 2
    assert "expected LINK:HASH" in result.output
    add_events(2)
    seal()
    result = runner.invoke(args=["vault", "audit-verify", "--anchor", "1:" + "00" * 32])
    assert result.exit_code == 1
    assert "row #1 (link 1) does not match the anchored hash" in result.output
