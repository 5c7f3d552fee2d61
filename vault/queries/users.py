"""Read side of the users page: staff accounts with what the page shows of each.

Never reads a password hash beyond whether there is one (an SSO-only account has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from vault.extensions import db
from vault.models import User


@dataclass(frozen=True)
class StaffRow:
    """One staff account as the users page lists it."""

    id: int
    email: str
    role: str
    enabled: bool
    sso_only: bool
    must_change_password: bool
    last_login_at: datetime | None
    created_at: datetime


def list_staff() -> list[StaffRow]:
    """Every staff account by e-mail."""
    rows = db.session.execute(
        select(
            User.id, User.email, User.role, User.enabled,
            User.password_hash.is_(None).label("sso_only"), User.must_change_password,
            User.last_login_at, User.created_at,
        ).order_by(User.email)
    )
    return [
        StaffRow(row.id, row.email, row.role, row.enabled, bool(row.sso_only),
                 row.must_change_password, row.last_login_at, row.created_at)
        for row in rows
    ]
