"""Issue 18's flat pages: the status filters are the health expression's answer exactly
(written as column conditions the planner takes to an index), and the health page's bounded
figures (key ids, the expiry chart) read as exact below their caps and "N+" past them."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.support.builders import ACME_PROVIDER
from vault.extensions import db
from vault.models import Connection, ConnectionTag, Token, utcnow
from vault.queries.connection_list import ConnectionFilters, list_connections
from vault.queries.connections import Health, at, health_source
from vault.queries.health import expiry_buckets, key_id_counts
from vault.queries.keyset import AtLeast
from vault.tokens.store import token_vault
from vault.web.chart import expiry_chart
from vault.web.filters import format_thousands

PROVIDERS = ACME_PROVIDER


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(PROVIDERS, encoding="utf-8")
    return app_config


def fill(count: int = 120) -> None:
    """Connections in every health: expired with and without a refresh token included."""
    rng, now = random.Random(18), utcnow()
    moments = [now - timedelta(days=3), now - timedelta(hours=1), now + timedelta(hours=2),
               now + timedelta(hours=20), now + timedelta(days=3), None]
    for n in range(count):
        connection = Connection(
            provider="acme", account_subject=f"s-{n:03d}",
            status=rng.choice(["active", "active", "active", "needs_reconnect", "error",
                               "disconnected"]),
            failure_count=rng.choice([0, 0, 0, 1]),
        )
        db.session.add(connection)
        db.session.flush()
        token_vault.store(connection, "access", f"access-value-{n:08d}",
                          expires_at=rng.choice(moments))
        if rng.random() < 0.5:
            token_vault.store(connection, "refresh", f"refresh-value-{n:08d}")
    db.session.commit()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_each_status_filter_lists_exactly_the_connections_of_that_health(app):
    fill()
    source = health_source()
    health_of = dict(db.session.execute(
        select(Connection.id, source.health).select_from(source.from_), at(None)).all())
    seen = set()
    for health in Health:
        listed = [row for row in list_connections(ConnectionFilters(health=health),
                                                  size=1000).items]
        expected = {id_ for id_, value in health_of.items() if value == health.value}
        assert {row.id for row in listed} == expected, health
        assert all(row.health == health.value for row in listed)
        seen |= expected
    # Every health is there, so each filter above was tried on rows it must leave out.
    assert {health_of[id_] for id_ in seen} == {health.value for health in Health}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_key_id_counts_are_exact_below_the_cap_and_a_bound_past_it(app, monkeypatch):
    fill(30)
    ids = db.session.scalars(select(Token.id).order_by(Token.id)).all()
    db.session.execute(update(Token).where(Token.id.in_(ids[:3])).values(key_id="0ld0ld00"))
    db.session.execute(update(Token).where(Token.id == ids[3]).values(key_id="fffffff0"))
    db.session.commit()
    current = token_vault.cipher.current_key_id
    rest = len(ids) - 4
    assert key_id_counts() == [(current, rest), ("0ld0ld00", 3), ("fffffff0", 1)]
    monkeypatch.setattr("vault.queries.health.TOTAL_CAP", 2)
    counts = dict(key_id_counts())
    assert counts == {current: 2, "0ld0ld00": 2, "fffffff0": 1}
    assert isinstance(counts[current], AtLeast) and isinstance(counts["0ld0ld00"], AtLeast)
    assert type(counts["fffffff0"]) is int


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_search_total_counts_each_match_once_up_to_its_cap(app, monkeypatch):
    for n in range(12):
        # Some match by e-mail and name both: counted once.
        db.session.add(Connection(
            provider="acme", account_subject=f"dana-{n}" if n % 3 == 0 else f"s-{n}",
            account_email=f"Dana{n}@example.com" if n % 2 else f"kim{n}@example.com",
            account_name="Dana K" if n % 4 == 1 else None, status="active"))
    db.session.commit()
    expected = sum(1 for n in range(12) if n % 3 == 0 or n % 2 or n % 4 == 1)
    page = list_connections(ConnectionFilters(search="DANA"))
    assert page.total == expected == len(page.items) and type(page.total) is int
    monkeypatch.setattr("vault.queries.connection_list.SEARCH_CAP", 3)
    capped = list_connections(ConnectionFilters(search="dana"))
    assert capped.total == 3 and isinstance(capped.total, AtLeast)
    assert len(capped.items) == expected


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_tag_total_counts_the_listed_connections_alone_and_with_other_filters(
        app, monkeypatch):
    fill(60)
    ids = db.session.scalars(select(Connection.id).order_by(Connection.id)).all()
    for connection_id in ids[::2]:
        db.session.add(ConnectionTag(connection_id=connection_id, tag="billing"))
    db.session.add(ConnectionTag(connection_id=ids[1], tag="crm"))
    db.session.commit()
    for filters in (ConnectionFilters(tag="billing"), ConnectionFilters(tag="crm"),
                    ConnectionFilters(tag="billing", health=Health.ERROR),
                    ConnectionFilters(tag="billing", provider="other"),
                    ConnectionFilters(tag="nobody")):
        page = list_connections(filters, size=1000)
        assert page.total == len(page.items) and type(page.total) is int, filters
    assert list_connections(ConnectionFilters(tag="billing"), size=1000).total == 30
    monkeypatch.setattr("vault.queries.keyset.TOTAL_CAP", 4)
    capped = list_connections(ConnectionFilters(tag="billing"), size=1000)
    assert capped.total == 4 and isinstance(capped.total, AtLeast)
    assert len(capped.items) == 30


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_chart_slot_past_its_cap_reads_as_at_least_and_so_do_its_sums(app, monkeypatch):
    now = utcnow().replace(hour=1, minute=0, second=0, microsecond=0) + timedelta(days=1)
    for n in range(3):
        connection = Connection(provider="acme", account_subject=f"s-{n}", status="active",
                                reconnect_by=now + timedelta(hours=1))
        db.session.add(connection)
        db.session.flush()
        token_vault.store(connection, "access", f"access-value-{n:08d}",
                          expires_at=now + timedelta(hours=2))
    db.session.commit()
    (exact,) = [bucket for bucket in expiry_buckets(now) if bucket.count]
    assert (exact.count, exact.reconnect) == (3, 3) and type(exact.count) is int
    monkeypatch.setattr("vault.queries.health.BUCKET_CAP", 2)
    (bounded,) = [bucket for bucket in expiry_buckets(now) if bucket.count]
    assert isinstance(bounded.count, AtLeast) and bounded.count == 2
    assert isinstance(bounded.reconnect, AtLeast) and bounded.reconnect == 2
    chart = expiry_chart(expiry_buckets(now), now)
    assert isinstance(chart["total"], AtLeast) and format_thousands(chart["total"]) == "2+"
