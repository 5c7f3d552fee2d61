"""The connections list: filters, sorts, and pages through an index (keyset pagination).

Every filter is one predicate built by :func:`list_conditions`, the list and its count share
them; a sort is a keyset (:func:`sort_keys`) whose first page reads the first rows of an
index. The total comes from the exact counts (:mod:`vault.queries.counts`) when only the
provider and the health narrow the list, else it is counted up to the cap ("10,000+").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, not_, or_, select, union

from vault.extensions import db
from vault.models import Connection, ConnectionStatus, ConnectionTag
from vault.queries.connections import _SOON, NOW, PAGE_SIZE, Health, at, health_source
from vault.queries.counts import add_counts, health_counts
from vault.queries.keyset import AtLeast, Cursor, Key, Page, capped_count, page_of
from vault.queries.keyset import after as keyset_after

SORTS = {
    "expiry": "Soonest expiry",
    "reconnect": "Reconnect soonest",
    "provider": "Provider",
    "account": "Account",
    "refreshed": "Last refreshed, newest first",
    "failures": "Most failures",
}

# A search's total is counted up to this many matches ("1,000+" past it).
SEARCH_CAP = 1_000


@dataclass(frozen=True)
class ConnectionFilters:
    """The connections list's query string, checked: unknown values fall back to defaults."""

    provider: str | None = None
    health: Health | None = None
    search: str = ""
    owner: str | None = None
    tag: str | None = None
    sort: str = "expiry"
    after: str | None = None  # the opaque cursor of the page to show (vault.queries.keyset)

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> ConnectionFilters:
        """Read ``provider``, ``status``, ``q``, ``owner``, ``tag``, ``sort`` and ``after``."""
        health = args.get("status") or None
        sort = args.get("sort") or "expiry"
        return cls(
            provider=(args.get("provider") or "").strip()[:64] or None,
            health=Health(health) if health in {state.value for state in Health} else None,
            search=" ".join((args.get("q") or "").split())[:200],
            owner=(args.get("owner") or "").strip().lower()[:320] or None,
            tag=(args.get("tag") or "").strip().lower()[:32] or None,
            sort=sort if sort in SORTS else "expiry",
            after=(args.get("after") or "").strip()[:2000] or None,
        )

    def query_args(self, **changes: Any) -> dict[str, Any]:
        """URL parameters for these filters (defaults left out), e.g. for the "Next" link."""
        current = replace(self, **changes)
        args = {
            "provider": current.provider,
            "status": current.health.value if current.health else None,
            "q": current.search or None,
            "owner": current.owner,
            "tag": current.tag,
            "sort": None if current.sort == "expiry" else current.sort,
            "after": current.after,
        }
        return {name: value for name, value in args.items() if value is not None}

    @property
    def active(self) -> bool:
        """Whether anything narrows the list."""
        return bool(self.provider or self.health or self.search or self.owner or self.tag)


def _account():
    return func.lower(
        func.coalesce(Connection.account_email, Connection.account_name, Connection.account_subject)
    )


def sort_keys(sort: str) -> list[Key]:
    """The keyset of a sort: its keys, the connection's id last (unique)."""
    expires = Key(Connection.expires_at, nullable=True, kind=datetime)
    keys = {
        # Through ix_connections_expires_at_id.
        "expiry": [expires],
        # Through ix_connections_reconnect_by; what already stopped comes first.
        "reconnect": [Key(Connection.reconnect_by, nullable=True, kind=datetime)],
        "provider": [Key(Connection.provider), Key(_account())],
        "account": [Key(_account())],
        "refreshed": [Key(Connection.last_refreshed_at, descending=True, nullable=True,
                          kind=datetime)],
        "failures": [Key(Connection.failure_count, descending=True, kind=int), expires],
    }
    return [*keys[sort], Key(Connection.id, kind=int)]


def _renewable():
    return health_source().renewable


# Each health as a condition on the connection's own columns (its definition, _health, read
# backwards, renewal included, from the copies on the connection): exactly the health
# expression's answer, in a form the planner takes to an index, walking the sort's order
# and stopping after a page instead of computing every connection's health.
_HEALTH_CONDITIONS = {
    Health.ACTIVE: lambda: and_(_usable(), or_(Connection.expires_at > _SOON,
                                               Connection.expires_at.is_(None))),
    Health.EXPIRING: lambda: and_(_usable(), Connection.expires_at > NOW,
                                  Connection.expires_at <= _SOON),
    Health.REFRESHABLE: lambda: and_(_usable(), Connection.expires_at <= NOW, _renewable()),
    Health.NEEDS_RECONNECT: lambda: or_(
        Connection.status == ConnectionStatus.NEEDS_RECONNECT.value,
        and_(_usable(), Connection.expires_at <= NOW, not_(_renewable())),
    ),
    Health.ERROR: lambda: or_(
        Connection.status == ConnectionStatus.ERROR.value,
        and_(Connection.status == ConnectionStatus.ACTIVE.value, Connection.failure_count > 0),
    ),
    Health.DISCONNECTED: lambda: Connection.status == ConnectionStatus.DISCONNECTED.value,
}


def _usable():
    return and_(Connection.status == ConnectionStatus.ACTIVE.value, Connection.failure_count == 0)


def list_conditions(filters: ConnectionFilters) -> list:
    """The filters as SQL, one composable predicate each: the list and its count share it."""
    conditions = []
    if filters.provider:
        conditions.append(Connection.provider == filters.provider)
    if filters.health:
        conditions.append(_HEALTH_CONDITIONS[filters.health]())
    if filters.search:
        # The start of the e-mail, name or subject, any case: a range of the lower() indexes
        # on PostgreSQL, never a scan of every connection.
        conditions.append(or_(*_searches(filters.search)))
    if filters.owner:
        conditions.append(Connection.owner_email == filters.owner)
    if filters.tag:
        conditions.append(Connection.id.in_(
            select(ConnectionTag.connection_id).where(ConnectionTag.tag == filters.tag)
        ))
    return conditions


def _searches(search: str) -> list:
    prefix = search.lower()
    return [func.lower(column).startswith(prefix, autoescape=True)
            for column in (Connection.account_email, Connection.account_name,
                           Connection.account_subject)]


def list_total(filters: ConnectionFilters, now: datetime | None = None) -> int:
    """How many connections match: from the exact counts when only provider and health
    narrow the list, else counted up to the cap ("10,000+")."""
    if not (filters.search or filters.owner or filters.tag):
        totals: Counter = Counter()
        for provider, counts in health_counts(now).items():
            if filters.provider in (None, provider):
                add_counts(totals, counts)
        if filters.health:
            return totals[filters.health.value]
        return sum(totals.values())
    statement = select(Connection.id)
    with db.session.no_autoflush:
        if filters.search:
            return _search_total(filters, statement, now)
        if filters.tag:
            return capped_count(_tagged(filters), at(now))
        return capped_count(statement.where(*list_conditions(filters)), at(now))


def _tagged(filters: ConnectionFilters):
    """The connections carrying the filters' tag, read from the tag's range of the
    ``connection_tags (tag, connection_id)`` index (index only when the tag is the sole
    filter), each joined to its connection only to check the other filters."""
    statement = select(ConnectionTag.connection_id).where(ConnectionTag.tag == filters.tag)
    others = list_conditions(replace(filters, tag=None))
    if others:
        statement = statement.join(Connection, Connection.id == ConnectionTag.connection_id)
    return statement.where(*others)


def _search_total(filters: ConnectionFilters, statement, now: datetime | None) -> int:
    """A search's matches up to :data:`SEARCH_CAP`: each column's prefix range read on its
    own index and stopped at the cap (one OR of the three, stopped early, the planner reads
    as a scan of the table), the ids merged."""
    others = list_conditions(replace(filters, search=""))
    firsts = [
        statement.where(*others, match).limit(SEARCH_CAP + 1).subquery()
        for match in _searches(filters.search)
    ]
    matches = union(*(select(first.c.id) for first in firsts)).subquery()
    number = db.session.scalar(select(func.count()).select_from(matches), at(now)) or 0
    return AtLeast(SEARCH_CAP) if number > SEARCH_CAP else number


def list_connections(
    filters: ConnectionFilters, now: datetime | None = None, size: int = PAGE_SIZE
) -> Page[Row]:
    """One page of connections matching ``filters``, after the filters' cursor."""
    source = health_source()
    keys = sort_keys(filters.sort)
    cursor = Cursor.decode(filters.after, keys)
    conditions = list_conditions(filters)
    if cursor is not None:
        conditions.append(keyset_after(keys, cursor))
    statement = (
        source.rows()
        .add_columns(_account().label("sort_account"))
        .where(*conditions)
        .order_by(*(key.order() for key in keys))
        .limit(size + 1)
    )
    rows = list(db.session.execute(statement, at(now)))
    columns = {"expiry": ("expires_at",), "reconnect": ("reconnect_by",),
               "provider": ("provider", "sort_account"), "account": ("sort_account",),
               "refreshed": ("last_refreshed_at",),
               "failures": ("failure_count", "expires_at")}[filters.sort]
    return page_of(rows, cursor, list_total(filters, now), size,
                   lambda row: [*(getattr(row, name) for name in columns), row.id])
