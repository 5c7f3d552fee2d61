"""Gauges read from the database when ``/metrics`` is scraped: one small function each.

Each function takes the session and returns metric families; :data:`DATABASE_GAUGES` lists
them, and :class:`DatabaseCollector` runs them all at scrape time. Being computed from the
database, they are the same whichever worker answers and are never summed over workers.
Every query is one statement over an index, cheap at 100,000 connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from vault.models import (
    Connection,
    ConnectionStatus,
    DeliveryStatus,
    NotificationDelivery,
    Token,
    TokenKind,
    WorkerHeartbeat,
    utcnow,
)

# The windows of token_vault_tokens_expiring, label first. Each count includes the shorter
# windows: a token expiring in 30 minutes counts for "1h" and for "24h".
EXPIRY_WINDOWS = (("1h", timedelta(hours=1)), ("24h", timedelta(hours=24)))

GaugeFunction = Callable[[Session], Iterable[GaugeMetricFamily]]


def connections_by_status(session: Session) -> Iterable[GaugeMetricFamily]:
    """``token_vault_connections{provider,status}``: one GROUP BY over (provider, status)'s
    index. Every status of a provider that has connections is present, 0 included, so a
    series drops to 0 instead of vanishing."""
    family = GaugeMetricFamily(
        "token_vault_connections",
        "Connections by provider and status (active, needs_reconnect, error, disconnected).",
        labels=["provider", "status"],
    )
    counts: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(Connection.provider, Connection.status, func.count())
        .group_by(Connection.provider, Connection.status)
    )
    for provider, status, count in rows:
        counts.setdefault(provider, dict.fromkeys((s.value for s in ConnectionStatus), 0))
        counts[provider][status] = count
    for provider, statuses in sorted(counts.items()):
        for status, count in statuses.items():
            family.add_metric([provider, status], count)
    return [family]


def tokens_expiring(session: Session) -> Iterable[GaugeMetricFamily]:
    """``token_vault_tokens_expiring{provider,within}``: valid access tokens whose known
    expiry falls within the next hour and day (already expired ones are not "expiring").
    One statement: a range scan of the (kind, expires_at) index, joined to the connection
    for its provider."""
    family = GaugeMetricFamily(
        "token_vault_tokens_expiring",
        "Valid access tokens expiring within the window (1h, 24h), by provider.",
        labels=["provider", "within"],
    )
    now = utcnow()
    longest = max(window for _, window in EXPIRY_WINDOWS)
    columns = [
        func.count(case((Token.expires_at <= now + window, 1))) for _, window in EXPIRY_WINDOWS
    ]
    rows = session.execute(
        select(Connection.provider, *columns)
        .join(Connection, Connection.id == Token.connection_id)
        .where(
            Token.kind == TokenKind.ACCESS.value,
            Token.is_valid.is_(True),
            Token.expires_at > now,
            Token.expires_at <= now + longest,
        )
        .group_by(Connection.provider)
    )
    for provider, *counts in rows:
        for (label, _), count in zip(EXPIRY_WINDOWS, counts, strict=True):
            family.add_metric([provider, label], count)
    return [family]


def worker_last_run(session: Session) -> Iterable[GaugeMetricFamily]:
    """``token_vault_worker_last_run_timestamp_seconds``: the newest worker heartbeat (Unix
    time), absent until a worker has run; alert when ``time() - it`` exceeds a few intervals."""
    family = GaugeMetricFamily(
        "token_vault_worker_last_run_timestamp_seconds",
        "When a vault worker last started or finished a cycle (Unix time).",
    )
    newest = session.scalar(select(func.max(WorkerHeartbeat.last_cycle_at)))
    if newest is not None:
        family.add_metric([], newest.timestamp())
    return [family]


def notifications_pending(session: Session) -> Iterable[GaugeMetricFamily]:
    """``token_vault_notifications_pending``: alert deliveries not yet taken by their
    channel (waiting, or backing off after failures)."""
    count = session.scalar(
        select(func.count()).where(NotificationDelivery.status == DeliveryStatus.PENDING.value)
    )
    return [GaugeMetricFamily(
        "token_vault_notifications_pending",
        "Alert deliveries waiting for their channel (new or retrying).",
        value=count or 0,
    )]


# Every database gauge, in the order they are exposed. A new one is a function above and
# its name here.
DATABASE_GAUGES: tuple[GaugeFunction, ...] = (
    connections_by_status, tokens_expiring, worker_last_run, notifications_pending
)


class DatabaseCollector(Collector):
    """Runs :data:`DATABASE_GAUGES` on ``session`` each time the registry is collected."""

    def __init__(self, session: Session, gauges: Iterable[GaugeFunction] = DATABASE_GAUGES):
        self.session = session
        self.gauges = tuple(gauges)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for gauge in self.gauges:
            yield from gauge(self.session)
