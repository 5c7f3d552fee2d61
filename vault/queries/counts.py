"""Connections counted by provider and health, without reading every connection.

A connection's health (:class:`~vault.queries.connections.Health`) has two parts:

* what does not move with the clock: *Disconnected*, *Needs reconnect* (status), *Error*
  (status ``error`` or failing refreshes), and "usable" (active, not failing). Database
  triggers keep these in ``connection_counts``, exact, in the transaction that moves a
  connection (:mod:`vault.count_triggers`); reading them is a few rows whatever the size.
* how the usable ones split by time: *Expiring* within 24 h, *Expired, refreshable* and
  expired with nothing to renew them (*Needs reconnect*). Those are the usable connections
  whose expiry (``connections.expires_at``) falls before ``now + 24 h``: one range of an
  index, soonest first, that stops after :data:`COUNT_CAP` connections. Under the cap
  the split is exact; past it the counts are lower bounds (:class:`AtLeast`, "1,000+") and
  *Active*, the rest of the usable ones, an upper bound (:class:`AtMost`).

So the pages cost the same at 1,000 connections and at 100,000 (docs/architecture.md,
"Exact counts").
"""

from __future__ import annotations

import functools
from collections import Counter
from datetime import datetime

from sqlalchemy import bindparam, func, select

from vault.extensions import db
from vault.models import Connection, ConnectionCount, ConnectionStatus
from vault.queries.connections import _SOON, Health, at, health_source
from vault.queries.keyset import AtLeast, AtMost

# How many usable connections expiring before now + 24 h the time split reads at most.
COUNT_CAP = 1000
TIMED = (Health.EXPIRING, Health.REFRESHABLE, Health.NEEDS_RECONNECT)


def settled_health(status: str, failing: bool) -> Health | None:
    """The health a connection has whatever the time, or None for a usable one."""
    if status == ConnectionStatus.DISCONNECTED.value:
        return Health.DISCONNECTED
    if status == ConnectionStatus.NEEDS_RECONNECT.value:
        return Health.NEEDS_RECONNECT
    if status == ConnectionStatus.ERROR.value or failing:
        return Health.ERROR
    return None


def stored_counts() -> dict[str, Counter]:
    """``connection_counts`` by provider: settled health values, and ``usable``."""
    counts: dict[str, Counter] = {}
    statement = select(ConnectionCount.provider, ConnectionCount.status,
                       ConnectionCount.failing, ConnectionCount.count).where(
        ConnectionCount.count != 0)
    for provider, status, failing, number in db.session.execute(statement):
        health = settled_health(status, failing)
        counts.setdefault(provider, Counter())[health.value if health else "usable"] += number
    return counts


def health_counts(now: datetime | None = None) -> dict[str, Counter]:
    """Connections counted by provider and health value (a string).

    Exact unless :data:`COUNT_CAP` or more usable connections expire within 24 h; then the
    time-split counts are :class:`AtLeast` and *Active* :class:`AtMost` values.
    """
    params = at(now) | {"cap": COUNT_CAP}
    capped = (db.session.scalar(_scanned_statement(), params) or 0) >= COUNT_CAP
    timed: dict[str, Counter] = {}
    for provider, health, number in db.session.execute(_timed_statement(), params):
        timed.setdefault(provider, Counter())[health] = number
    counts: dict[str, Counter] = {}
    for provider, stored in stored_counts().items():
        split = timed.get(provider, Counter())
        shown = Counter({key: number for key, number in stored.items() if key != "usable"})
        for health in TIMED:
            shown[health.value] += split[health.value]
        active = stored["usable"] - sum(split[health.value] for health in TIMED)
        shown[Health.ACTIVE.value] = active
        if capped:
            for health in TIMED:
                shown[health.value] = AtLeast(shown[health.value])
            shown[Health.ACTIVE.value] = AtMost(active)
        counts[provider] = Counter({key: number for key, number in shown.items() if number})
    return counts


def health_totals(now: datetime | None = None) -> Counter:
    """Connections counted by health over all providers."""
    totals: Counter = Counter()
    for counts in health_counts(now).values():
        add_counts(totals, counts)
    return totals


def add_counts(totals: Counter, counts: Counter) -> None:
    """Add ``counts`` into ``totals``, a bound staying a bound."""
    for key, number in counts.items():
        total = totals[key] + number
        totals[key] = type(number)(total) if isinstance(number, AtLeast | AtMost) else total


def _expiring():
    """The first ``cap`` usable connections expiring before ``soon``, soonest first: one
    range of ``ix_connections_status_failure_count_expires_at``."""
    return (
        select(Connection.id)
        .where(*_expiring_conditions())
        .order_by(Connection.expires_at)
        .limit(bindparam("cap"))
        .subquery()
    )


def _expiring_conditions() -> tuple:
    return (
        Connection.status == ConnectionStatus.ACTIVE.value,
        Connection.failure_count == 0,
        Connection.expires_at <= _SOON,
    )


@functools.cache
def _scanned_statement():
    return select(func.count()).select_from(_expiring())


@functools.cache
def _timed_statement():
    source = health_source()
    # The capped range itself, with the health of each row: the planner walks the index and
    # probes each row's tokens, instead of hashing every connection (``id IN (...)`` did).
    inner = (
        select(Connection.provider.label("provider"), source.health.label("health"))
        .select_from(source.from_)
        .where(*_expiring_conditions())
        .order_by(Connection.expires_at)
        .limit(bindparam("cap"))
        .subquery()
    )
    return (
        select(inner.c.provider, inner.c.health, func.count())
        .where(inner.c.health.in_([health.value for health in TIMED]))
        .group_by(inner.c.provider, inner.c.health)
    )
