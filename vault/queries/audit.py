"""The audit page's queries: the log filtered by action, actor, connection and dates.

The page and its export (web and CLI) read the same :class:`AuditFilters` and the same
conditions; the export walks its rows in id order, a batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, cast

from sqlalchemy import ColumnElement, Row, Table, func, select

from vault.extensions import db
from vault.models import AuditEvent
from vault.queries.connections import PAGE_SIZE, positive_int
from vault.queries.keyset import Cursor, Key, Page, capped_count, distinct_values, page_of
from vault.queries.keyset import after as keyset_after

EXPORT_BATCH_SIZE = 1000
_events = cast(Table, AuditEvent.__table__)
# Every column but the MAC and its key id (which mean nothing without the secret).
EXPORT_COLUMNS = tuple(
    column for column in _events.columns if column.name not in ("chain_mac", "chain_key_id")
)


@dataclass(frozen=True)
class AuditFilters:
    """The audit page's query string, checked."""

    action: str | None = None
    actor: str = ""
    connection_id: int | None = None
    since: date | None = None
    until: date | None = None
    after: str | None = None  # the opaque cursor of the page to show (vault.queries.keyset)

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> AuditFilters:
        """Read ``action``, ``actor``, ``connection``, ``since``, ``until`` and ``after``.

        ``since`` and ``until`` are days (YYYY-MM-DD, UTC), both included; an unreadable one
        is ignored, as an unreadable page number is.
        """
        return cls(
            action=(args.get("action") or "").strip()[:64] or None,
            actor=" ".join((args.get("actor") or "").split())[:320],
            connection_id=positive_int(args.get("connection")),
            since=parse_day(args.get("since")),
            until=parse_day(args.get("until")),
            after=(args.get("after") or "").strip()[:2000] or None,
        )

    def query_args(self, **changes: Any) -> dict[str, Any]:
        """URL parameters for these filters (defaults left out)."""
        current = replace(self, **changes)
        args = {
            "action": current.action,
            "actor": current.actor or None,
            "connection": current.connection_id,
            "since": current.since.isoformat() if current.since else None,
            "until": current.until.isoformat() if current.until else None,
            "after": current.after,
        }
        return {name: value for name, value in args.items() if value is not None}

    @property
    def active(self) -> bool:
        """Whether anything narrows the log."""
        return bool(
            self.action or self.actor or self.connection_id or self.since or self.until
        )

    def describe(self) -> str:
        """The filters in words, for the audit row an export leaves (``all events`` if none)."""
        args = self.query_args(after=None)
        return " ".join(f"{name}={value}" for name, value in args.items()) or "all events"


def parse_day(value: str | None) -> date | None:
    """A YYYY-MM-DD day, or None for anything else."""
    try:
        return date.fromisoformat((value or "").strip()) if value else None
    except ValueError:
        return None


def _conditions(filters: AuditFilters) -> list[ColumnElement[bool]]:
    # The one place the filters become SQL: the page, its count and the export share it.
    conditions = []
    if filters.action:
        conditions.append(AuditEvent.action == filters.action)
    if filters.actor:
        conditions.append(AuditEvent.actor.icontains(filters.actor, autoescape=True))
    if filters.connection_id:
        conditions.append(AuditEvent.connection_id == filters.connection_id)
    if filters.since:
        conditions.append(AuditEvent.occurred_at >= _midnight(filters.since))
    if filters.until:
        conditions.append(AuditEvent.occurred_at < _midnight(filters.until + timedelta(days=1)))
    return conditions


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


# Newest first, through ix_audit_events_occurred_at (ix_audit_events_action_occurred_at
# when filtered by action).
AUDIT_KEYS = (
    Key(AuditEvent.occurred_at, descending=True, kind=datetime),
    Key(AuditEvent.id, descending=True, kind=int),
)


def list_audit(filters: AuditFilters, size: int = PAGE_SIZE) -> Page[AuditEvent]:
    """One page of audit events matching ``filters``, newest first, after the cursor; the
    total counted up to the cap ("10,000+")."""
    conditions = _conditions(filters)
    total = capped_count(select(AuditEvent.id).where(*conditions))
    cursor = Cursor.decode(filters.after, AUDIT_KEYS)
    if cursor is not None:
        conditions.append(keyset_after(AUDIT_KEYS, cursor))
    statement = (
        select(AuditEvent)
        .where(*conditions)
        .order_by(*(key.order() for key in AUDIT_KEYS))
        .limit(size + 1)
    )
    rows = list(db.session.scalars(statement))
    return page_of(rows, cursor, total, size, lambda event: (event.occurred_at, event.id))


def audit_actions() -> list[str]:
    """Every action that occurs in the audit log, for the filter's choices: skipped through
    ``ix_audit_events_action_occurred_at``, a few probes per action however long the log."""
    actions = distinct_values(AuditEvent.action)
    statement = (select(actions.c.value).where(actions.c.value.is_not(None))
                 .order_by(actions.c.value))
    return list(db.session.scalars(statement))


def connection_history(connection_id: int, limit: int = 20) -> list[AuditEvent]:
    """The connection's latest audit events (refreshes, failures, reconnects), newest first."""
    statement = (
        select(AuditEvent)
        .where(AuditEvent.connection_id == connection_id)
        .order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
        .limit(limit)
    )
    return list(db.session.scalars(statement))


@dataclass(frozen=True)
class ExportSelection:
    """What an export of the filters holds, fixed when it starts, and its rows to come."""

    description: str
    count: int
    field_names: tuple[str, ...]
    batches: Iterator[Sequence[Row[Any]]]


def select_for_export(filters: AuditFilters) -> ExportSelection:
    """The rows ``filters`` select up to the newest id now, counted; read later in batches.

    Rows written while the export streams are left for the next one, so the count recorded
    in the audit trail is the count delivered.
    """
    last_id = db.session.scalar(select(func.max(AuditEvent.id))) or 0
    count = db.session.scalar(
        select(func.count(AuditEvent.id)).where(*_conditions(filters), AuditEvent.id <= last_id)
    )
    return ExportSelection(
        description=filters.describe(),
        count=count or 0,
        field_names=tuple(column.name for column in EXPORT_COLUMNS),
        batches=export_batches(filters, last_id),
    )


def export_batches(
    filters: AuditFilters, last_id: int, size: int = EXPORT_BATCH_SIZE
) -> Iterator[Sequence[Row[Any]]]:
    """The matching rows up to ``last_id``, oldest first, ``size`` at a time (keyset paging).

    Each batch is one short query for plain rows (no ORM objects), so memory stays bounded
    by ``size`` however many rows match, and no cursor stays open between batches.
    """
    conditions, after = _conditions(filters), 0
    while True:
        batch = db.session.execute(
            select(*EXPORT_COLUMNS)
            .where(*conditions, _events.c.id > after, _events.c.id <= last_id)
            .order_by(_events.c.id)
            .limit(size)
        ).all()
        if batch:
            yield batch
            after = batch[-1].id
        if len(batch) < size:
            return
