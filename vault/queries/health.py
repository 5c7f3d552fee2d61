"""The health page's queries: what needs attention, keys in use, upcoming expiries, the worker.

Built on the health expression of :mod:`vault.queries.connections`; nothing here decrypts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Row, and_, bindparam, case, func, literal, select, union_all

from vault.extensions import db
from vault.models import (
    Connection,
    ConnectionStatus,
    Token,
    UTCDateTime,
    WorkerHeartbeat,
    utcnow,
)
from vault.queries.connections import _SOON, NOW, Health, at, health_source
from vault.queries.keyset import TOTAL_CAP, AtLeast, distinct_values

ATTENTION = (Health.EXPIRING, Health.NEEDS_RECONNECT, Health.ERROR)


def needing_attention(now: datetime | None = None, limit: int = 10) -> dict[str, list[Row]]:
    """The first ``limit`` connections of each :data:`ATTENTION` state, most urgent first.

    Soonest expiry first for ``expiring``, most failures for ``error``, latest change for
    ``needs_reconnect``. One statement: a few short candidate lists, each the first rows of
    an index range (so the cost does not grow with the number of connections), ranked.
    """
    found: dict[str, list[Row]] = {health.value: [] for health in ATTENTION}
    for row in db.session.execute(_attention_statement(), at(now) | {"limit": limit}):
        found[row.health].append(row)
    return found


def _first(condition, *order):
    rows = health_source().rows().where(condition).order_by(*order, Connection.id)
    return select(rows.limit(bindparam("limit")).subquery())


def _candidates():
    """At most ``limit`` rows from each place an attention state's most urgent rows are."""
    usable = and_(Connection.status == ConnectionStatus.ACTIVE.value,
                  Connection.failure_count == 0)
    return union_all(
        _first(and_(usable, Connection.expires_at > NOW, Connection.expires_at <= _SOON),
               Connection.expires_at),
        _first(Connection.status == ConnectionStatus.NEEDS_RECONNECT.value,
               Connection.updated_at.desc()),
        # Expired with nothing to renew it: the most recently expired (a range of the index
        # back from now, stopped at ``limit`` unrenewable ones).
        _first(and_(usable, Connection.expires_at <= NOW,
                    health_source().health == Health.NEEDS_RECONNECT.value),
               Connection.expires_at.desc()),
        # Most failures, ties latest expiry first: the (status, failure_count, expires_at)
        # index read backwards, so only the first rows are read.
        _first(Connection.status == ConnectionStatus.ERROR.value,
               Connection.failure_count.desc(), Connection.expires_at.desc()),
        _first(and_(Connection.status == ConnectionStatus.ACTIVE.value,
                    Connection.failure_count > 0),
               Connection.failure_count.desc(), Connection.expires_at.desc()),
    ).subquery()


@functools.cache
def _attention_statement():
    inner = _candidates()
    columns = inner.c
    rank = func.row_number().over(
        partition_by=columns.health,
        order_by=(
            case((columns.health == Health.EXPIRING.value, columns.expires_at)).asc().nulls_last(),
            case((columns.health == Health.ERROR.value, columns.failure_count)).desc().nulls_last(),
            columns.updated_at.desc(),
            columns.id,
        ),
    )
    ranked = (
        select(inner, rank.label("rank"))
        .where(columns.health.in_([health.value for health in ATTENTION]))
        .subquery()
    )
    return select(ranked).where(ranked.c.rank <= bindparam("limit")).order_by(ranked.c.rank)


def key_id_counts() -> list[tuple[str, int]]:
    """How many stored values sit under each encryption key id, most first.

    Each counted up to :data:`~vault.queries.keyset.TOTAL_CAP` (an :class:`AtLeast` past
    it, "10,000+"): the key ids are found by skipping through ``ix_tokens_key_id`` (a few
    index probes each), and what matters during a rotation, the values left under an old
    key, is exact once it falls below the cap.
    """
    rows = db.session.execute(_key_ids_statement(), {"cap": TOTAL_CAP + 1})
    counts = [(key_id, AtLeast(TOTAL_CAP) if number > TOTAL_CAP else number)
              for key_id, number in rows]
    return sorted(counts, key=lambda pair: (-pair[1], pair[0]))


@functools.cache
def _key_ids_statement():
    tokens = Token.__table__
    key_ids = distinct_values(tokens.c.key_id)
    capped = (
        select(literal(1)).select_from(tokens).where(tokens.c.key_id == key_ids.c.value)
        .correlate(key_ids).limit(bindparam("cap")).subquery()
    )
    number = select(func.count()).select_from(capped).scalar_subquery()
    return select(key_ids.c.value, number).where(key_ids.c.value.is_not(None))


@dataclass(frozen=True)
class Bucket:
    """Expiries falling in [start, end); ``past`` when the slot is over already.

    ``reconnect``: active connections whose reconnect-by date falls in the slot, the ones
    that stop unless a person acts (a refresh cannot save them).
    """

    start: datetime
    end: datetime
    count: int
    past: bool = False
    reconnect: int = 0


def expiry_buckets(
    now: datetime | None = None, *, days: int = 7, hours: int = 6
) -> list[Bucket]:
    """Active connections' credentials expiring in each ``hours``-long slot from today
    00:00 UTC on, and their reconnect-by dates in the same slots.

    Whole days, so a chart's days line up: today (its slots before ``now`` are ``past``,
    the current one counts from ``now``) and the ``days`` days after it. Each slot is a
    range of an index counted up to :data:`BUCKET_CAP` (an :class:`AtLeast` past it,
    "100+"), so the chart costs the same whatever the number of connections.
    """
    now = now or utcnow()
    step = timedelta(hours=hours)
    midnight = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [midnight + step * n for n in range((days + 1) * 24 // hours)]
    future = [start for start in starts if start + step > now]
    # Slot i counts [low_i, high_i): the first from now, the others whole.
    slots: dict[str, datetime | int] = {
        f"low_{n}": max(start, now) for n, start in enumerate(future)
    }
    slots |= {f"high_{n}": start + step for n, start in enumerate(future)}
    slots["cap"] = BUCKET_CAP + 1
    counts = db.session.execute(_slots_statement("expires_at", len(future)), slots).one()
    reconnects = db.session.execute(_slots_statement("reconnect_by", len(future)), slots).one()
    by_start = dict(zip(future, zip(map(_bounded, counts), map(_bounded, reconnects),
                                    strict=True), strict=True))
    return [
        Bucket(start, start + step, by_start[start][0], reconnect=by_start[start][1])
        if start in by_start else Bucket(start, start + step, 0, past=True)
        for start in starts
    ]


# How many expiries (or reconnect-by dates) one slot of the chart counts at most.
BUCKET_CAP = 100


def _bounded(number: int) -> int:
    return AtLeast(BUCKET_CAP) if number > BUCKET_CAP else number


def _slot_bounds(slots: int) -> list[tuple]:
    return [
        (bindparam(f"low_{n}", type_=UTCDateTime()), bindparam(f"high_{n}", type_=UTCDateTime()))
        for n in range(slots)
    ]


@functools.cache
def _slots_statement(column: str, slots: int):
    """Active connections with ``column`` in each slot, each counted up to ``cap``: one
    short range of ``ix_connections_expires_at_id`` or ``ix_connections_reconnect_by``
    per slot."""
    when = getattr(Connection, column)
    counts = []
    for low, high in _slot_bounds(slots):
        first = (
            select(literal(1))
            .where(Connection.status == ConnectionStatus.ACTIVE.value, when >= low, when < high)
            .limit(bindparam("cap"))
            .subquery()
        )
        counts.append(select(func.count()).select_from(first).scalar_subquery())
    return select(*counts)


# A worker is late once its newest heartbeat is older than this many of its intervals.
LATE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class WorkerStatus:
    """The newest worker heartbeat, as ``/health`` and ``/healthz`` show it."""

    last_run_at: datetime
    seconds_ago: int
    interval_seconds: int
    ok: bool  # whether that cycle's jobs all went well
    running: int  # workers whose heartbeat is not late

    @property
    def late(self) -> bool:
        return self.seconds_ago > LATE_AFTER_INTERVALS * self.interval_seconds


def worker_status(now: datetime | None = None) -> WorkerStatus | None:
    """What the newest worker heartbeat says; None when no worker has run (or for a day)."""
    now = now or utcnow()
    beats = db.session.execute(
        select(
            WorkerHeartbeat.last_cycle_at, WorkerHeartbeat.interval_seconds, WorkerHeartbeat.last_ok
        ).order_by(WorkerHeartbeat.last_cycle_at.desc())
    ).all()
    if not beats:
        return None
    newest = beats[0]
    running = sum(
        1
        for beat in beats
        if (now - beat.last_cycle_at).total_seconds()
        <= LATE_AFTER_INTERVALS * beat.interval_seconds
    )
    return WorkerStatus(
        last_run_at=newest.last_cycle_at,
        seconds_ago=max(0, int((now - newest.last_cycle_at).total_seconds())),
        interval_seconds=newest.interval_seconds,
        ok=newest.last_ok,
        running=running,
    )


def connections_to_reconnect_within(now: datetime, within: timedelta) -> list[Connection]:
    """Active connections that stop working by ``now + within`` unless a person acts (their
    reconnect-by date; ones already past it come first), for the ``connection.expiring``
    alert. Connections already marked needs-reconnect or disconnected are not included:
    nothing is left to warn about before it happens."""
    return list(db.session.scalars(
        select(Connection)
        .where(
            Connection.status == ConnectionStatus.ACTIVE.value,
            Connection.reconnect_by.is_not(None),
            Connection.reconnect_by <= now + within,
        )
        .order_by(Connection.reconnect_by, Connection.id)
    ))
