"""The token API's one-statement hand-out (PostgreSQL): one round trip for a fresh token, the
same answers and audit rows as the long way, and the long way for everything else."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from flask import current_app
from sqlalchemy import event, select, update

from tests.support.refresh_fixtures import (
    OLD_ACCESS_TOKEN,
    both_backends,
    make_connection,
    postgresql_only,
)
from vault.extensions import db as _db
from vault.models import (
    AuditEvent,
    AuditHandoutCount,
    Connection,
    ConnectionConsumer,
    ConnectionTag,
    ServiceKey,
    Token,
    TokenKind,
    utcnow,
)
from vault.refresh import rows as refresh_rows
from vault.services import handout, service_keys

pytestmark = pytest.mark.shared_postgres_database

AUDITED = ("actor", "actor_user_id", "action", "target", "connection_id", "client_address",
           "outcome", "detail", "request_id")


def new_key(db, name="billing", *, providers=("acme",), tags=()) -> str:
    row, key = service_keys.create_key(name, list(providers), {"acme", "voicenter"})
    row.allowed_tags = list(tags)
    db.session.commit()
    return key


def get(client, connection_id, key, request_id="req-1"):
    return client.get(f"/api/v1/connections/{connection_id}/access-token",
                      headers={"Authorization": f"Bearer {key}", "X-Request-ID": request_id})


@contextmanager
def statements() -> Iterator[list[tuple[str, bool]]]:
    """Every statement sent to the database meanwhile, on any of the app's engines, with
    whether it ran in autocommit."""
    sent: list[tuple[str, bool]] = []

    def spot(conn, cursor, statement, parameters, context, executemany):
        driver = conn.connection.driver_connection
        autocommit = getattr(driver, "autocommit", None)  # psycopg; None on sqlite3
        sent.append((statement, bool(autocommit)))

    engines = [_db.engine, *filter(None, [current_app.extensions.get(handout.ENGINE)])]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", spot)
    try:
        yield sent
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", spot)


def synchronous_commit(engine) -> str:
    with engine.connect() as connection:
        return connection.exec_driver_sql("SHOW synchronous_commit").scalar_one()


def handed_out_rows() -> list[tuple]:
    _db.session.expire_all()
    columns = [getattr(AuditEvent, name) for name in AUDITED]
    query = select(*columns).where(AuditEvent.action == "token.handed_out").order_by(AuditEvent.id)
    return [tuple(row) for row in _db.session.execute(query)]


def the_long_way(monkeypatch) -> None:
    """Make the token API skip the one-statement hand-out, as on SQLite or for an unknown key."""
    monkeypatch.setattr(handout, "hand_out_at_once", lambda presented, connection_id: None)


@postgresql_only
def test_a_fresh_token_costs_one_statement_in_autocommit(vault_app, db, client, stub):
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    assert get(client, connection_id, key).status_code == 200  # the process learns the key
    with statements() as sent:
        response = get(client, connection_id, key)
    assert response.status_code == 200 and response.json["access_token"] == OLD_ACCESS_TOKEN
    assert len(sent) == 1, [statement for statement, _ in sent]
    statement, autocommit = sent[0]
    assert statement.lstrip().startswith("WITH") and autocommit  # no BEGIN, no COMMIT
    assert len(handed_out_rows()) == 2


@postgresql_only
def test_the_hand_out_alone_does_not_wait_for_the_disk(vault_app, db, client, stub):
    # VAULT_HANDOUT_COMMIT=async (the default): the one statement runs on the hand-out
    # engine, whose commits do not wait for a disk flush; every other write stays durable.
    handout_engine = vault_app.extensions[handout.ENGINE]
    assert synchronous_commit(handout_engine) == "off"
    assert synchronous_commit(db.engine) == "on"
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    assert get(client, connection_id, key).status_code == 200
    on_handout_engine: list[str] = []
    event.listen(handout_engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: on_handout_engine.append(statement))
    assert get(client, connection_id, key).status_code == 200
    assert len(on_handout_engine) == 1 and on_handout_engine[0].lstrip().startswith("WITH")
    assert len(handed_out_rows()) == 2


@pytest.fixture
def durable_handouts(app_config):
    app_config["VAULT_HANDOUT_COMMIT"] = "durable"


@postgresql_only
def test_a_durable_hand_out_runs_on_the_session_and_waits_for_the_disk(durable_handouts,
                                                                      vault_app, db, client,
                                                                      stub):
    assert handout.ENGINE not in vault_app.extensions
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    assert get(client, connection_id, key).status_code == 200
    with statements() as sent:
        assert get(client, connection_id, key).status_code == 200
    assert len(sent) == 1 and sent[0][0].lstrip().startswith("WITH") and sent[0][1]
    assert len(handed_out_rows()) == 2


@both_backends
def test_both_ways_give_the_same_answer_audit_rows_and_consumer(vault_app, db, client, stub,
                                                                monkeypatch, database_url):
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    get(client, connection_id, key, "warm-up")
    db.session.execute(update(ServiceKey).values(last_used_at=None))
    db.session.execute(ConnectionConsumer.__table__.delete())
    db.session.commit()

    with statements() as sent:
        fast = get(client, connection_id, key, "same-request")
    fast_consumer = db.session.execute(select(ConnectionConsumer.service_key_id)).all()
    fast_used = db.session.scalar(select(ServiceKey.last_used_at))
    db.session.execute(update(ServiceKey).values(last_used_at=None))
    db.session.execute(ConnectionConsumer.__table__.delete())
    db.session.commit()
    with monkeypatch.context() as patched:
        the_long_way(patched)
        long = get(client, connection_id, key, "same-request")
    long_consumer = db.session.execute(select(ConnectionConsumer.service_key_id)).all()

    if database_url.startswith("postgresql"):
        assert len(sent) == 1  # the first way was the one-statement hand-out
    assert (fast.status_code, fast.json, fast.headers["Cache-Control"]) == (
        long.status_code, long.json, long.headers["Cache-Control"])
    rows = handed_out_rows()
    assert rows[-1] == rows[-2]
    assert rows[-1][:5] == ("service:billing", None, "token.handed_out", "acme", connection_id)
    assert rows[-1][-1] == "same-request"
    assert fast_consumer == long_consumer and len(fast_consumer) == 1
    assert fast_used is not None and db.session.scalar(select(ServiceKey.last_used_at))


@postgresql_only
def test_the_keys_last_use_and_consumer_move_at_most_once_a_minute(vault_app, db, client, stub):
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    get(client, connection_id, key)
    earlier = utcnow() - timedelta(minutes=5)
    db.session.execute(update(ServiceKey).values(last_used_at=earlier))
    db.session.execute(update(ConnectionConsumer).values(last_fetched_at=earlier))
    db.session.commit()
    with statements() as sent:
        assert get(client, connection_id, key).status_code == 200
    assert len(sent) == 1
    db.session.expire_all()
    moved = db.session.scalar(select(ServiceKey.last_used_at))
    fetched = db.session.scalar(select(ConnectionConsumer.last_fetched_at))
    assert moved > earlier and fetched > earlier

    with statements() as sent:
        assert get(client, connection_id, key).status_code == 200
    assert len(sent) == 1
    db.session.expire_all()
    assert db.session.scalar(select(ServiceKey.last_used_at)) == moved
    assert db.session.scalar(select(ConnectionConsumer.last_fetched_at)) == fetched


@postgresql_only
def test_hourly_audit_counts_on_the_fast_path(vault_app, db, client, stub):
    vault_app.config["VAULT_AUDIT_HANDOUTS"] = "hourly"
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    get(client, connection_id, key)
    with statements() as sent:
        for _ in range(3):
            assert get(client, connection_id, key).status_code == 200
    assert len(sent) == 3
    assert handed_out_rows() == []
    count = db.session.execute(select(AuditHandoutCount)).scalar_one()
    assert (count.actor, count.connection_id, count.target, count.count) == (
        "service:billing", connection_id, "acme", 4)
    assert count.hour == utcnow().replace(minute=0, second=0, microsecond=0)


@postgresql_only
def test_restrictions_expiry_revocation_and_rotation_hold_on_the_fast_path(vault_app, db, client,
                                                                           stub):
    billing = make_connection(stub, subject="billing-account", expires_in=3600)
    untagged = make_connection(stub, subject="untagged-account", expires_in=3600)
    other = make_connection(stub, provider="voicenter", subject="voicenter-account")
    db.session.add(ConnectionTag(connection_id=billing, tag="billing"))
    db.session.commit()
    key = new_key(db, "tagged", tags=["billing"])
    assert get(client, billing, key).status_code == 200  # known to the process from now on

    with statements() as sent:
        assert get(client, billing, key).status_code == 200
    assert len(sent) == 1
    for hidden in (untagged, other, 999_999):
        response = get(client, hidden, key)
        assert response.status_code == 404 and response.json["error"] == "not_found"

    # Widened restrictions are the long way's to learn; narrowed ones hold at once.
    db.session.execute(update(ServiceKey).values(allowed_tags=["calendar"]))
    db.session.commit()
    assert get(client, billing, key).status_code == 404

    db.session.execute(update(ServiceKey).values(allowed_tags=[]))
    db.session.commit()
    assert get(client, untagged, key).status_code == 200
    db.session.execute(update(ServiceKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert get(client, untagged, key).status_code == 401

    db.session.execute(update(ServiceKey).values(expires_at=None, revoked_at=utcnow()))
    db.session.commit()
    refused = get(client, untagged, key)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"]


@postgresql_only
def test_a_rotated_keys_previous_secret_works_on_the_fast_path_until_the_overlap_ends(
    vault_app, db, client, stub
):
    connection_id = make_connection(stub, expires_in=3600)
    old = new_key(db, "rotating")
    assert get(client, connection_id, old).status_code == 200
    new = service_keys.generate_key()
    db.session.execute(update(ServiceKey).values(
        previous_key_hash=service_keys.hash_key(old), key_hash=service_keys.hash_key(new),
        previous_key_expires_at=utcnow() + timedelta(hours=1),
    ))
    db.session.commit()
    for secret in (old, new, old, new):
        assert get(client, connection_id, secret).status_code == 200
    with statements() as sent:
        assert get(client, connection_id, old).status_code == 200
    assert len(sent) == 1
    db.session.execute(
        update(ServiceKey).values(previous_key_expires_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    assert get(client, connection_id, old).status_code == 401
    assert get(client, connection_id, new).status_code == 200


@postgresql_only
def test_anything_not_ready_takes_the_long_way(vault_app, db, client, stub, providers_file):
    expiring = make_connection(stub, subject="expiring", expires_in=120)
    broken = make_connection(stub, subject="broken", expires_in=3600)
    key = new_key(db)
    assert get(client, broken, key).status_code == 200
    db.session.execute(update(Connection).where(Connection.id == broken)
                       .values(status="needs_reconnect", last_error="invalid_grant"))
    db.session.commit()

    refreshed = get(client, expiring, key)
    assert refreshed.status_code == 200 and stub.count() == 1
    assert refreshed.json["access_token"] == stub.issued_access_tokens[0]
    response = get(client, broken, key)
    assert response.status_code == 409 and response.json["error"] == "needs_reconnect"
    assert [row[4] for row in handed_out_rows()] == [broken, expiring]


@postgresql_only
def test_a_provider_left_out_of_the_providers_file_is_not_handed_out(vault_app, db, client,
                                                                     stub):
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    assert get(client, connection_id, key).status_code == 200
    providers = vault_app.extensions["providers"]
    vault_app.extensions["providers"] = type(providers)([p for p in providers if p.key != "acme"])
    try:
        response = get(client, connection_id, key)
    finally:
        vault_app.extensions["providers"] = providers
    assert response.status_code == 409 and response.json["error"] == "provider_not_configured"
    assert len(handed_out_rows()) == 1


@postgresql_only
def test_the_fast_path_does_not_wait_for_a_refresh_holding_the_connection(vault_app, db, client,
                                                                          stub):
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    assert get(client, connection_id, key).status_code == 200
    db.session.execute(update(ConnectionConsumer).values(
        last_fetched_at=utcnow() - timedelta(minutes=5)))  # the upsert moves this time
    db.session.commit()
    answers = []
    worker = threading.Thread(target=lambda: answers.append(get(client, connection_id,
                                                                key).status_code))
    with vault_app.app_context():  # a session of its own, as another worker's refresh has
        assert refresh_rows.lock_row(connection_id, timeout=5) is not None
        worker.start()
        worker.join(timeout=10)
        waited_for_the_lock = worker.is_alive()
        _db.session.rollback()
    worker.join()
    assert not waited_for_the_lock and answers == [200]


@postgresql_only
def test_an_undecryptable_token_is_answered_as_on_the_long_way(vault_app, db, client, stub):
    connection_id = make_connection(stub, expires_in=3600)
    key = new_key(db)
    assert get(client, connection_id, key).status_code == 200
    row = db.session.scalar(select(Token).where(Token.kind == TokenKind.ACCESS.value))
    row.ciphertext = row.ciphertext[:-1] + bytes([row.ciphertext[-1] ^ 1])
    db.session.commit()
    response = get(client, connection_id, key)
    assert response.status_code == 500 and response.json["error"] == "undecryptable"
    # The one difference (docs/architecture.md, "Token API"): the statement audited it.
    assert len(handed_out_rows()) == 2
