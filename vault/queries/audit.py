"""The audit page's queries: the log filtered by action, actor and connection, paginated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select

from vault.extensions import db
from vault.models import AuditEvent
from vault.queries.connections import PAGE_SIZE, Page, page_number, positive_int


@dataclass(frozen=True)
class AuditFilters:
    """The audit page's query string, checked."""

    action: str | None = None
    actor: str = ""
    connection_id: int | None = None
    page: int = 1

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> AuditFilters:
        """Read ``action``, ``actor``, ``connection`` and ``page``."""
        return cls(
            action=(args.get("action") or "").strip()[:64] or None,
            actor=" ".join((args.get("actor") or "").split())[:320],
            connection_id=positive_int(args.get("connection")),
            page=positive_int(args.get("page"), 1) or 1,
        )

    def query_args(self, **changes: Any) -> dict[str, Any]:
        """URL parameters for these filters (defaults left out)."""
        current = replace(self, **changes)
        args = {
            "action": current.action,
            "actor": current.actor or None,
            "connection": current.connection_id,
            "page": None if current.page == 1 else current.page,
        }
        return {name: value for name, value in args.items() if value is not None}

    @property
    def active(self) -> bool:
        """Whether anything narrows the log."""
        return bool(self.action or self.actor or self.connection_id)


def list_audit(filters: AuditFilters, size: int = PAGE_SIZE) -> Page[AuditEvent]:
    """One page of audit events matching ``filters``, newest first."""
    conditions = []
    if filters.action:
        conditions.append(AuditEvent.action == filters.action)
    if filters.actor:
        conditions.append(AuditEvent.actor.icontains(filters.actor, autoescape=True))
    if filters.connection_id:
        conditions.append(AuditEvent.connection_id == filters.connection_id)
    total = db.session.scalar(select(func.count(AuditEvent.id)).where(*conditions)) or 0
    number = page_number(filters.page, total, size)
    statement = (
        select(AuditEvent)
        .where(*conditions)
        .order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
        .limit(size)
        .offset((number - 1) * size)
    )
    return Page(list(db.session.scalars(statement)), total, number, size)


def audit_actions() -> list[str]:
    """Every action that occurs in the audit log, for the filter's choices."""
    statement = select(AuditEvent.action).distinct().order_by(AuditEvent.action)
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
