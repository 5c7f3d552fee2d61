"""The outbox's writers: one alert per state change, in the transaction that made it.

Every status change of a connection goes through the ORM (the refresh engine, the services,
``TokenVault.mark_invalid``), so one ``before_flush`` listener sees them all and adds the
alert to the same flush: committed together with the change, or not at all. The time-based
rules (:mod:`vault.alerts.rules`) write through :func:`add_once` too.

Each alert has a unique ``dedupe_key`` naming the state change (event, connection, and when
the state began); :func:`add_once` is ``INSERT ... ON CONFLICT DO NOTHING``, so the same
change, or a rule evaluated by two workers, never makes a second row.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, scoped_session

from vault.extensions import db
from vault.models import Connection, ConnectionStatus, Notification, utcnow

NEEDS_RECONNECT = "connection.needs_reconnect"
RECOVERED = "connection.recovered"
REFRESH_FAILING = "connection.refresh_failing"
EXPIRING = "connection.expiring"
CLIENT_SECRET_EXPIRING = "provider.client_secret_expiring"
DIGEST = "connections.digest"  # many connections of one provider broke at once
TEST = "vault.test"  # the admin page's "Send test alert"

# Events that mean a connection broke: five or more of one provider in one cycle go to people
# as one digest.
BREAKING = (NEEDS_RECONNECT, REFRESH_FAILING)
_BROKEN_STATUSES = (ConnectionStatus.NEEDS_RECONNECT.value, ConnectionStatus.ERROR.value)


def add_once(
    session: Session | scoped_session[Any],
    event_type: str,
    dedupe_key: str,
    *,
    provider: str | None,
    connection_id: int | None,
    details: dict[str, Any],
) -> bool:
    """Add an alert unless one with ``dedupe_key`` exists; True when this call added it."""
    table = Notification.__table__
    values = {
        "event": event_type,
        "dedupe_key": dedupe_key,
        "provider": provider,
        "connection_id": connection_id,
        "details": details,
        "created_at": utcnow(),
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(values).on_conflict_do_nothing(
        index_elements=["dedupe_key"]
    )
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def connection_details(connection: Connection, reason: str, **extra: Any) -> dict[str, Any]:
    """What an alert about ``connection`` says about it: never a token, key or secret."""
    return {
        "provider": connection.provider,
        "account": connection.account_email or connection.account_name
        or connection.account_subject,
        "status": connection.status,
        "reason": reason,
        **extra,
    }


def stamp(moment: datetime) -> str:
    """A moment as it appears in dedupe keys (UTC, microseconds)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def failing_key(connection_id: int, failing_since: datetime) -> str:
    """The dedupe key of the refresh_failing alert of one run of failures."""
    return f"{REFRESH_FAILING}:{connection_id}:{stamp(failing_since)}"


def listen_for_state_changes() -> None:
    """Register the ``before_flush`` listener on the vault's sessions (once per process)."""
    if not event.contains(db.session, "before_flush", _before_flush):
        event.listen(db.session, "before_flush", _before_flush)


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    now = utcnow()
    for instance in list(session.dirty):
        if isinstance(instance, Connection) and session.is_modified(instance):
            _state_change(session, instance, now)


def _before(session: Session, connection: Connection, names: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``names`` before this flush's changes.

    An attribute set on an expired instance (after a commit) has no old value in its history:
    the row, not yet flushed, still holds it.
    """
    state = inspect(connection)
    old: dict[str, Any] = {}
    unknown = []
    for name in names:
        history = state.attrs[name].history
        if history.deleted:
            old[name] = history.deleted[0]
        elif history.added:
            unknown.append(name)
        else:
            old[name] = getattr(connection, name)
    if unknown:
        table = Connection.__table__
        with session.no_autoflush:
            row = session.execute(
                select(*(table.c[name] for name in unknown)).where(table.c.id == connection.id)
            ).one()
        old.update(zip(unknown, row, strict=True))
    return old


def _state_change(session: Session, connection: Connection, now: datetime) -> None:
    with session.no_autoflush:
        before = _before(session, connection, ("status", "failure_count", "failing_since"))
    old_status, status = before["status"], connection.status
    old_failures, failures = before["failure_count"] or 0, connection.failure_count or 0
    # failing_since follows failure_count: set by the first transient failure, cleared with it.
    old_failing_since = before["failing_since"]
    if failures and not old_failures and connection.failing_since is None:
        connection.failing_since = now
    elif not failures and connection.failing_since is not None:
        connection.failing_since = None
    if status == old_status and failures == old_failures:
        return
    if status == ConnectionStatus.NEEDS_RECONNECT.value != old_status:
        reason = (
            "The provider refused the vault's stored grant, so no new tokens can be fetched "
            "for this account until its owner signs in again (reconnects)."
        )
        if connection.last_error:
            reason += f" The provider said: {connection.last_error}"
        add_once(
            session, NEEDS_RECONNECT, f"{NEEDS_RECONNECT}:{connection.id}:{stamp(now)}",
            provider=connection.provider, connection_id=connection.id,
            details=connection_details(connection, reason),
        )
        return
    if status != ConnectionStatus.ACTIVE.value or failures:
        return
    was_broken = old_status in _BROKEN_STATUSES
    # A short run of failures nobody was told about needs no "recovered" either.
    was_reported_failing = (
        old_status == ConnectionStatus.ACTIVE.value
        and old_failing_since is not None
        and _exists(session, failing_key(connection.id, old_failing_since))
    )
    if was_broken or was_reported_failing:
        reason = "It works again: the vault can fetch tokens for this account."
        add_once(
            session, RECOVERED, f"{RECOVERED}:{connection.id}:{stamp(now)}",
            provider=connection.provider, connection_id=connection.id,
            details=connection_details(connection, reason),
        )


def _exists(session: Session, dedupe_key: str) -> bool:
    with session.no_autoflush:
        found = session.execute(
            select(Notification.id).where(Notification.dedupe_key == dedupe_key)
        ).first()
    return found is not None
