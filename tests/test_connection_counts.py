"""``connection_counts`` stays equal to a full recount of ``connections`` after thousands of
random operations (connect, reconnect, refresh failures and recoveries, needs-reconnect,
disconnect, delete, rolled-back changes), on SQLite and PostgreSQL, and on PostgreSQL under
threads writing at once; the copies of each connection's token rows on the connection
(expiry, refresh token validity and expiry, which kinds are stored) equal the rows; and the
pages' counts by health then equal the health expression counted over every connection with
its renewal check reading the token rows themselves."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
from flask import current_app
from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from tests.support.builders import ACME_PROVIDER, make_user, oauth2_provider
from vault.extensions import db
from vault.grants import StoredRows
from vault.models import Connection, ConnectionCount, ConnectionStatus, Token, User, utcnow
from vault.queries.connections import _Source, at
from vault.queries.counts import COUNT_CAP, health_counts
from vault.queries.keyset import AtLeast, AtMost
from vault.services.connections import Account, disconnect, record_grant
from vault.tokens.store import token_vault

PROVIDERS = ACME_PROVIDER + "\n" + oauth2_provider("zeta", "Zeta")
both_backends = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(PROVIDERS, encoding="utf-8")
    return app_config


def recount() -> Counter:
    """Connections counted from every row: what connection_counts must say."""
    failing = Connection.failure_count > 0
    statement = select(Connection.provider, Connection.status, failing, func.count()).group_by(
        Connection.provider, Connection.status, failing
    )
    return Counter({(p, s, bool(f)): n for p, s, f, n in db.session.execute(statement)})


def copies_mismatches() -> list:
    """Connections whose copies of their token rows (vault.count_triggers.TOKEN_COPIES) are
    not what the rows say: recomputed here from ``tokens``, independently of the triggers."""
    def one(column, kind):
        return select(column).where(
            Token.connection_id == Connection.id, Token.kind == kind).scalar_subquery()

    def stored(kind):
        return exists().where(Token.connection_id == Connection.id, Token.kind == kind)

    wanted = {
        Connection.expires_at: func.coalesce(one(Token.expires_at, "access"),
                                             one(Token.expires_at, "api_key")),
        Connection.refresh_token_valid: one(Token.is_valid, "refresh"),
        Connection.refresh_token_expires_at: one(Token.expires_at, "refresh"),
        Connection.has_api_key: stored("api_key"),
        Connection.has_api_secret: stored("api_secret"),
        Connection.has_private_key: stored("private_key"),
    }
    return db.session.execute(select(Connection.id).where(or_(
        *(column.is_distinct_from(value) for column, value in wanted.items())))).all()


def stored() -> Counter:
    rows = db.session.execute(select(ConnectionCount.provider, ConnectionCount.status,
                                     ConnectionCount.failing, ConnectionCount.count)).all()
    assert all(number >= 0 for *_, number in rows), rows
    return Counter({(p, s, bool(f)): n for p, s, f, n in rows if n})


def health_recount() -> dict[str, Counter]:
    """Counts by provider and health from the health expression over every connection, its
    renewal check reading the token rows themselves rather than the copies."""
    source = _Source(StoredRows.correlated(Connection.__table__, Token.__table__))
    inner = select(Connection.provider.label("p"), source.health.label("h")).select_from(
        source.from_).subquery()
    statement = select(inner.c.p, inner.c.h, func.count()).group_by(inner.c.p, inner.c.h)
    counts: dict[str, Counter] = {}
    for provider, health, number in db.session.execute(statement, at(None)):
        counts.setdefault(provider, Counter())[health] = number
    return counts


class Operations:
    """Random operations through the code paths that move connections."""

    def __init__(self, rng: random.Random, user_id: int, prefix: str = ""):
        self.rng, self.user_id, self.prefix = rng, user_id, prefix
        self.serial = 0

    def _pick(self) -> Connection | None:
        # Locked first, as the refresh engine and the views do: the operations then never
        # deadlock over connection and token rows, so a deadlock would be the counts'.
        ids = db.session.scalars(select(Connection.id)).all()
        if not ids:
            return None
        return db.session.get(Connection, self.rng.choice(ids), with_for_update=True)

    def connect(self) -> None:
        """A grant recorded (new, or a reconnect of an existing account)."""
        provider = current_app.extensions["providers"].get(self.rng.choice(["acme", "zeta"]))
        self.serial += 1
        subject = f"{self.prefix}sub-{self.rng.randrange(self.serial + 20)}"
        seconds = self.rng.choice([-3600, 600, 7200, 5 * 86400, None])
        answer = {"access_token": f"at-{self.serial:030d}", "token_type": "Bearer"}
        if seconds is not None:
            answer["expires_in"] = seconds if seconds > 0 else 1
        if self.rng.random() < 0.7:
            answer["refresh_token"] = f"rt-{self.serial:030d}"
        db.session.scalar(select(Connection).where(  # a reconnect: its row locked first
            Connection.provider == provider.key, Connection.account_subject == subject
        ).with_for_update())
        connection, _ = record_grant(provider, answer, Account(subject, None, None),
                                     db.session.get(User, self.user_id))
        if seconds is not None and seconds < 0:  # an access token that has expired since
            db.session.flush()
            db.session.execute(
                update(Token).where(Token.connection_id == connection.id, Token.kind == "access")
                .values(expires_at=utcnow() + timedelta(seconds=seconds)))

    def fail(self) -> None:
        """A transient refresh failure (the engine's ORM change)."""
        if connection := self._pick():
            connection.failure_count = (connection.failure_count or 0) + 1
            connection.next_refresh_at = utcnow() + timedelta(minutes=5)

    def recover(self) -> None:
        """A refresh that went well after failures (a Core UPDATE, as batch code writes)."""
        if connection := self._pick():
            db.session.execute(update(Connection).where(Connection.id == connection.id)
                               .values(failure_count=0, next_refresh_at=None))

    def reject(self) -> None:
        """The provider refused the grant: needs reconnect."""
        if connection := self._pick():
            token_vault.mark_invalid(connection, "invalid_grant")
            connection.status = ConnectionStatus.NEEDS_RECONNECT.value

    def error(self) -> None:
        if connection := self._pick():
            connection.status = ConnectionStatus.ERROR.value

    def disconnect(self) -> None:
        if connection := self._pick():
            disconnect(connection, None, db.session.get(User, self.user_id))

    def delete(self) -> None:
        if connection := self._pick():
            db.session.execute(delete(Connection).where(Connection.id == connection.id))

    def rename(self) -> None:
        """A provider key changed by hand (moves the connection between providers)."""
        if connection := self._pick():
            other = "zeta" if connection.provider == "acme" else "acme"
            clash = db.session.scalar(select(Connection.id).where(
                Connection.provider == other,
                Connection.account_subject == connection.account_subject))
            if clash is None:
                connection.provider = other

    def store(self) -> None:
        """An API key, API secret or private key stored, or a token row removed (what the
        renewal check reads of the rows, copied onto the connection)."""
        if connection := self._pick():
            kind = self.rng.choice(["api_key", "api_secret", "private_key", "refresh"])
            if self.rng.random() < 0.5:
                db.session.execute(delete(Token).where(Token.connection_id == connection.id,
                                                       Token.kind == kind))
            else:
                token_vault.store(connection, kind, f"{kind}-value-{self.serial:020d}")

    def touch(self) -> None:
        """A change that moves no count (an UPDATE the triggers skip)."""
        if connection := self._pick():
            connection.last_error = f"note {self.serial}"

    def step(self) -> None:
        """One random operation, committed, or (one time in ten) rolled back."""
        name = self.rng.choices(
            ["connect", "fail", "recover", "reject", "error", "disconnect", "delete",
             "rename", "store", "touch"],
            weights=[30, 15, 10, 8, 3, 6, 4, 3, 8, 5],
        )[0]
        getattr(self, name)()
        if self.rng.random() < 0.1:
            db.session.rollback()
        else:
            db.session.commit()


@both_backends
def test_counts_equal_a_full_recount_after_thousands_of_random_operations(app):
    operations = Operations(random.Random(18), make_user("admin@example.com", role="admin").id)
    for number in range(1, 1201):
        operations.step()
        if number % 300 == 0:
            assert stored() == recount(), f"after {number} operations"
            assert copies_mismatches() == [], f"after {number} operations"
    assert sum(recount().values()) > 50
    assert health_counts() == health_recount()


def test_a_failed_transaction_moves_no_count(app):
    connection = Connection(provider="acme", account_subject="a", status="active")
    db.session.add(connection)
    db.session.commit()
    connection.status = ConnectionStatus.NEEDS_RECONNECT.value
    db.session.add(Connection(provider="acme", account_subject="a"))  # unique clash
    with pytest.raises(Exception):  # noqa: B017 - the clash, whatever the driver calls it
        db.session.commit()
    db.session.rollback()
    assert stored() == recount() == Counter({("acme", "active", False): 1})


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_counts_stay_exact_under_concurrent_writers_on_postgresql(app):
    user_id = make_user("admin@example.com", role="admin").id
    # Shared rows that every thread moves: their count rows are the contended ones.
    for n in range(40):
        db.session.add(Connection(provider="acme", account_subject=f"shared-{n}"))
    db.session.commit()
    errors: list[BaseException] = []
    retried = Counter()

    def work(seed: int) -> None:
        with app.app_context():
            operations = Operations(random.Random(seed), user_id, prefix=f"t{seed}-")
            try:
                for _ in range(250):
                    try:
                        operations.step()
                    except OperationalError as error:  # a deadlock elsewhere, or a lock wait
                        db.session.rollback()
                        retried[type(error.orig).__name__] += 1
                    except Exception as error:  # noqa: BLE001 - a unique clash between threads
                        if "unique" not in str(error).lower():
                            raise
                        db.session.rollback()
            except BaseException as error:  # noqa: BLE001 - reported by the main thread
                errors.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db.session.expire_all()
    assert stored() == recount()
    assert copies_mismatches() == []
    assert sum(recount().values()) > 100
    assert health_counts() == health_recount()
    # The triggers take count rows in key order: no deadlock between opposite moves.
    assert "DeadlockDetected" not in retried


@both_backends
def test_past_the_cap_the_time_split_is_a_bound_and_the_rest_stays_exact(app, monkeypatch):
    monkeypatch.setattr("vault.queries.counts.COUNT_CAP", 3)
    now = utcnow()
    for n in range(8):
        connection = Connection(provider="acme", account_subject=f"soon-{n}")
        db.session.add(connection)
        db.session.flush()
        token_vault.store(connection, "access", f"access-value-{n:08d}",
                          expires_at=now + timedelta(hours=1 + n))
    db.session.add(Connection(provider="acme", account_subject="gone", status="disconnected"))
    db.session.commit()
    counts = health_counts(now)["acme"]
    assert isinstance(counts["expiring"], AtLeast) and counts["expiring"] == 3
    assert isinstance(counts["active"], AtMost) and counts["active"] == 5
    assert counts["disconnected"] == 1 and type(counts["disconnected"]) is int
    assert COUNT_CAP >= 1000


@both_backends
def test_seed_demo_bulk_copy_moves_the_counts_and_expiries(app):
    from vault.cli.demo import seed_demo

    seed_demo(120, seed=4)
    assert stored() == recount() and sum(recount().values()) == 120
    assert copies_mismatches() == []
    assert health_counts() == health_recount()


@both_backends
def test_create_all_on_a_database_that_has_the_tables_leaves_the_triggers_as_they_are(app):
    db.create_all()  # a second app on the same database (the benchmarks do this): no error
    operations = Operations(random.Random(3), make_user("admin@example.com", role="admin").id)
    for _ in range(40):
        operations.step()
    assert stored() == recount() and sum(recount().values()) > 5
    assert copies_mismatches() == []
