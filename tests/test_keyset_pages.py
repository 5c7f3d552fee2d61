"""Keyset pagination: walking a list page by page with its cursors gives every row once, in
the order one long page gives, for every sort (NULLs, ties and descending keys included);
totals past the cap read "10,000+"; owner and tag filters; an unreadable cursor starts over."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from tests.support.builders import ACME_PROVIDER
from vault.extensions import db
from vault.models import AuditEvent, Connection, ConnectionTag, utcnow
from vault.queries.audit import AuditFilters, list_audit
from vault.queries.connection_list import SORTS, ConnectionFilters, list_connections
from vault.queries.keyset import AtLeast, Cursor
from vault.tokens.store import token_vault

PROVIDERS = ACME_PROVIDER


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(PROVIDERS, encoding="utf-8")
    return app_config


def fill(count: int = 90) -> None:
    rng, now = random.Random(7), utcnow()
    # Few distinct values, so sort keys tie and NULLs are common.
    moments = [now + timedelta(hours=h) for h in (-5, 1, 1, 30)] + [None, None]
    for n in range(count):
        connection = Connection(
            provider=rng.choice(["acme", "zeta"]), account_subject=f"s-{n:03d}",
            account_email=rng.choice([None, f"P{n % 7}@example.com"]),
            account_name=rng.choice([None, "Same Name"]),
            status=rng.choice(["active", "active", "needs_reconnect", "disconnected"]),
            failure_count=rng.choice([0, 0, 2]), reconnect_by=rng.choice(moments),
            last_refreshed_at=rng.choice(moments), owner_email=rng.choice(["a@x.io", None]),
        )
        db.session.add(connection)
        db.session.flush()
        token_vault.store(connection, "access", f"access-value-{n:08d}",
                          expires_at=rng.choice(moments))
        if n % 3 == 0:
            db.session.add(ConnectionTag(connection_id=connection.id, tag="ops"))
    db.session.commit()


def walk(filters: ConnectionFilters, size: int) -> list[int]:
    seen, after = [], None
    for _ in range(100):
        page = list_connections(ConnectionFilters(**{**filters.__dict__, "after": after}),
                                size=size)
        assert page.before == len(seen)
        seen += [row.id for row in page.items]
        if page.next_cursor is None:
            return seen
        after = page.next_cursor
    raise AssertionError("no end")


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("sort", list(SORTS))
def test_walking_the_pages_gives_every_row_once_in_order(app, sort):
    fill()
    filters = ConnectionFilters(sort=sort)
    whole = [row.id for row in list_connections(filters, size=1000).items]
    assert len(whole) == 90
    assert walk(filters, size=7) == whole
    narrowed = ConnectionFilters(sort=sort, owner="a@x.io", tag="ops")
    expected = {c.id for c in db.session.query(Connection).filter_by(owner_email="a@x.io")
                if any(t.tag == "ops" for t in db.session.query(ConnectionTag)
                       .filter_by(connection_id=c.id))}
    assert sorted(walk(narrowed, size=4)) == sorted(expected) and expected


def test_totals_past_the_cap_read_as_at_least(app, admin_client, monkeypatch):
    fill(30)
    monkeypatch.setattr("vault.queries.keyset.TOTAL_CAP", 5)
    page = list_connections(ConnectionFilters(owner="a@x.io"))
    assert isinstance(page.total, AtLeast) and page.total == 5
    html = admin_client.get("/connections?owner=a@x.io").get_data(as_text=True)
    assert "of 5+ connections" in html
    # Provider and health alone: the exact counts, whatever the cap.
    exact = list_connections(ConnectionFilters())
    assert exact.total == 30 and type(exact.total) is int


def test_unreadable_or_foreign_cursors_start_from_the_beginning(app):
    fill(20)
    first = list_connections(ConnectionFilters(), size=5)
    for bad in ("x", "!!!", Cursor(("not a date", 3), 5).encode(),
                Cursor((None,), 5).encode(), Cursor((None, True), 5).encode()):
        page = list_connections(ConnectionFilters(after=bad), size=5)
        assert [r.id for r in page.items] == [r.id for r in first.items], bad
    # A cursor of another sort does not fit this one's keys either.
    other = list_connections(ConnectionFilters(sort="provider"), size=5).next_cursor
    assert list_connections(ConnectionFilters(after=other), size=5).before == 0


def test_audit_pages_walk_newest_first(app):
    now = utcnow()
    for n in range(23):  # ties on occurred_at: the id decides
        db.session.add(AuditEvent(actor="system", action="token.refreshed", outcome="success",
                                  occurred_at=now - timedelta(minutes=n // 3)))
    db.session.commit()
    seen, after = [], None
    while True:
        page = list_audit(AuditFilters(action="token.refreshed", after=after), size=4)
        seen += [event.id for event in page.items]
        if not page.next_cursor:
            break
        after = page.next_cursor
    whole = [event.id for event in list_audit(AuditFilters(action="token.refreshed"),
                                              size=100).items]
    assert seen == whole and len(whole) == 23
