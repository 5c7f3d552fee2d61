"""The dashboard's queries: connection health, the providers overview, the connections list.

Views parse the query string into the small filter classes here and render what these
functions return. Every page runs a fixed number of statements whatever the number of
connections (grouped counts, one LIMIT/OFFSET page), and nothing here decrypts: the list
and health pages read status and expiry columns only (docs/architecture.md, "Data model").
The health page's own queries are in :mod:`vault.queries.health`, the audit page's in
:mod:`vault.queries.audit`.

A connection's *health* is what staff act on, computed in SQL by one expression
(:attr:`_Source.health`) that the overview counts, the list filter and the health page all
share, so a count on one page always matches the list it links to. The expressions are
built once per process, the time coming in as bound parameters (:func:`at`).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from flask import current_app
from sqlalchemy import Row, and_, bindparam, case, func, or_, select

from vault.extensions import db
from vault.grants import GrantProviders, StoredRows, renewable_clause
from vault.models import Connection, ConnectionStatus, Token, TokenKind, UTCDateTime, utcnow

PAGE_SIZE = 50
SOON = timedelta(hours=24)
T = TypeVar("T")


class Health(str, enum.Enum):
    """What a connection needs, from its status, failures and token expiries."""

    ACTIVE = "active"  # usable, valid beyond 24 h (or expiry unknown)
    EXPIRING = "expiring"  # usable, expires within 24 h
    REFRESHABLE = "refreshable"  # expired, but a refresh token or API secret can renew it
    NEEDS_RECONNECT = "needs_reconnect"  # grant refused, or expired with nothing to renew it
    ERROR = "error"  # refreshes are failing (provider down, rate-limited, ...)
    DISCONNECTED = "disconnected"

    @property
    def label(self) -> str:
        """The words for it, as badges and filters show them."""
        return HEALTH_LABELS[self]


HEALTH_LABELS = {
    Health.ACTIVE: "Active",
    Health.EXPIRING: "Expiring within 24 h",
    Health.REFRESHABLE: "Expired, refreshable",
    Health.NEEDS_RECONNECT: "Needs reconnect",
    Health.ERROR: "Error",
    Health.DISCONNECTED: "Disconnected",
}
EXPIRED_UNRENEWABLE = "expired, and nothing stored can renew it"


NOW = bindparam("now", type_=UTCDateTime())
_SOON = bindparam("soon", type_=UTCDateTime())


def at(now: datetime | None) -> dict:
    """The bound parameters of :class:`_Source`'s expressions for the time ``now``.

    The providers file's grants come in as parameters too, so that the expressions, built
    once per process, serve every app and providers file.
    """
    now = now or utcnow()
    grants = GrantProviders.of(current_app.extensions["providers"])
    return {"now": now, "soon": now + SOON, **grants.params()}


@functools.cache
def health_source() -> _Source:
    """The joined connections and their health expression (built once, on first use)."""
    return _Source()


class _Source:
    """``connections`` outer-joined to its access, refresh, API key and API secret rows.

    Each join matches at most one row, (connection_id, kind) being unique, so the joined
    rows are exactly the connections. Joins, not correlated subqueries: PostgreSQL hashes
    each kind once, and the plan stays cheap enough not to trigger its JIT compiler. The
    "expiry" shown is the access token's, or the API key's for providers whose pasted key
    expires (WhatsApp system-user tokens): ``connections.expires_at``. The time comes in as
    the bound parameters ``now`` and ``soon`` (:func:`at`), so the expressions are built
    once per process.
    """

    def __init__(self):
        table = Connection.__table__
        self.access, self.refresh, self.api_key, self.api_secret = (
            Token.__table__.alias(kind) for kind in ("access", "refresh", "api_key", "api_secret")
        )
        joined = table
        for alias in (self.access, self.refresh, self.api_key, self.api_secret):
            joined = joined.outerjoin(
                alias, and_(alias.c.connection_id == table.c.id, alias.c.kind == alias.name)
            )
        self.from_ = joined
        # The access token's expiry, else the API key's: copied onto the connection by the
        # triggers on tokens (vault/count_triggers.py), so lists sort through an index.
        self.expires_at = Connection.expires_at
        self.renewable = self._renewable()
        self.health = self._health()

    def _renewable(self):
        stored = StoredRows.joined({
            TokenKind.REFRESH: self.refresh,
            TokenKind.API_KEY: self.api_key,
            TokenKind.API_SECRET: self.api_secret,
        })
        return renewable_clause(Connection.__table__, stored, now=NOW)

    def _health(self):
        status = Connection.status
        return case(
            (status == ConnectionStatus.DISCONNECTED.value, Health.DISCONNECTED.value),
            (status == ConnectionStatus.NEEDS_RECONNECT.value, Health.NEEDS_RECONNECT.value),
            (
                or_(status == ConnectionStatus.ERROR.value, Connection.failure_count > 0),
                Health.ERROR.value,
            ),
            (
                self.expires_at <= NOW,
                case(
                    (self.renewable, Health.REFRESHABLE.value), else_=Health.NEEDS_RECONNECT.value
                ),
            ),
            (self.expires_at <= _SOON, Health.EXPIRING.value),
            else_=Health.ACTIVE.value,
        )

    def rows(self):
        """A SELECT of what a list row shows."""
        return select(
            Connection.id,
            Connection.provider,
            Connection.account_subject,
            Connection.account_email,
            Connection.account_name,
            Connection.status,
            Connection.failure_count,
            Connection.last_error,
            Connection.last_refreshed_at,
            Connection.next_refresh_at,
            Connection.updated_at,
            Connection.reconnect_by,
            Connection.reconnect_reason,
            self.expires_at.label("expires_at"),
            self.refresh.c.expires_at.label("refresh_expires_at"),
            self.renewable.label("renewable"),
            self.health.label("health"),
        ).select_from(self.from_)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a longer list."""

    items: list[T]
    total: int
    number: int
    size: int = PAGE_SIZE

    @property
    def pages(self) -> int:
        """How many pages there are (at least one, even when empty)."""
        return max(1, math.ceil(self.total / self.size))

    @property
    def first_item(self) -> int:
        """1-based position of this page's first item (0 when there is none)."""
        return 0 if self.total == 0 else (self.number - 1) * self.size + 1

    @property
    def last_item(self) -> int:
        """1-based position of this page's last item."""
        return min(self.total, self.number * self.size)


def page_number(requested: int, total: int, size: int) -> int:
    """The page to show: a page past the end (a link kept after rows went away) is the last."""
    return min(max(1, requested), max(1, math.ceil(total / size)))


def positive_int(value: Any, default: int | None = None) -> int | None:
    """A query-string number, or ``default`` when it is missing, malformed or out of range."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if 0 < number < 2**31 else default


# -- connections list --------------------------------------------------------------------

SORTS = {
    "expiry": "Soonest expiry",
    "reconnect": "Reconnect soonest",
    "provider": "Provider",
    "account": "Account",
    "refreshed": "Last refreshed, newest first",
    "failures": "Most failures",
}


@dataclass(frozen=True)
class ConnectionFilters:
    """The connections list's query string, checked: unknown values fall back to defaults."""

    provider: str | None = None
    health: Health | None = None
    search: str = ""
    sort: str = "expiry"
    page: int = 1

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> ConnectionFilters:
        """Read ``provider``, ``status``, ``q``, ``sort`` and ``page``."""
        health = args.get("status") or None
        sort = args.get("sort") or "expiry"
        return cls(
            provider=(args.get("provider") or "").strip()[:64] or None,
            health=Health(health) if health in {state.value for state in Health} else None,
            search=" ".join((args.get("q") or "").split())[:200],
            sort=sort if sort in SORTS else "expiry",
            page=positive_int(args.get("page"), 1) or 1,
        )

    def query_args(self, **changes: Any) -> dict[str, Any]:
        """URL parameters for these filters (defaults left out), e.g. for pagination links."""
        current = replace(self, **changes)
        args = {
            "provider": current.provider,
            "status": current.health.value if current.health else None,
            "q": current.search or None,
            "sort": None if current.sort == "expiry" else current.sort,
            "page": None if current.page == 1 else current.page,
        }
        return {name: value for name, value in args.items() if value is not None}

    @property
    def active(self) -> bool:
        """Whether anything narrows the list."""
        return bool(self.provider or self.health or self.search)


def _order(source: _Source, sort: str) -> tuple:
    account = func.lower(
        func.coalesce(Connection.account_email, Connection.account_name, Connection.account_subject)
    )
    orders = {
        "expiry": (source.expires_at.asc().nulls_last(),),
        # Through ix_connections_reconnect_by; what already stopped comes first.
        "reconnect": (Connection.reconnect_by.asc().nulls_last(),),
        "provider": (Connection.provider, account),
        "account": (account,),
        "refreshed": (Connection.last_refreshed_at.desc().nulls_last(),),
        "failures": (Connection.failure_count.desc(), source.expires_at.asc().nulls_last()),
    }
    return (*orders[sort], Connection.id)


def list_connections(
    filters: ConnectionFilters, now: datetime | None = None, size: int = PAGE_SIZE
) -> Page[Row]:
    """One page of connections matching ``filters``: a count, then the page."""
    source = health_source()
    conditions = []
    if filters.provider:
        conditions.append(Connection.provider == filters.provider)
    if filters.health:
        conditions.append(source.health == filters.health.value)
    if filters.search:
        conditions.append(
            or_(
                *(
                    column.icontains(filters.search, autoescape=True)
                    for column in (
                        Connection.account_email,
                        Connection.account_name,
                        Connection.account_subject,
                    )
                )
            )
        )
    params = at(now)
    total = db.session.scalar(
        select(func.count()).select_from(source.from_).where(*conditions), params
    ) or 0
    number = page_number(filters.page, total, size)
    statement = (
        source.rows()
        .where(*conditions)
        .order_by(*_order(source, filters.sort))
        .limit(size)
        .offset((number - 1) * size)
    )
    return Page(list(db.session.execute(statement, params)), total, number, size)
