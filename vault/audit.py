"""The audit trail: :func:`record` for every security event, :func:`insert_now` on hot paths.

:func:`handed_out` audits a token hand-out as VAULT_AUDIT_HANDOUTS says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from flask import current_app, has_request_context, request
from flask_login import current_user
from sqlalchemy import CTE, Insert, Table, bindparam, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from vault.extensions import db
from vault.models import AuditEvent, AuditHandoutCount, Connection, User, utcnow
from vault.observability.request_ids import current_request_id
from vault.redact import redact

# One statement built once: the hot paths (a token handed out) add a row without the ORM,
# and without RETURNING the new id, which nobody reads.
_INSERT = insert(cast(Table, AuditEvent.__table__)).inline()
_COUNTS = cast(Table, AuditHandoutCount.__table__)


def _one_more(
    insert: postgresql.Insert | sqlite.Insert,
) -> postgresql.Insert | sqlite.Insert:
    # VAULT_AUDIT_HANDOUTS=hourly: one more in the hour's row, created by the hour's first.
    return insert.on_conflict_do_update(
        index_elements=["actor", "connection_id", "hour"], set_={"count": _COUNTS.c.count + 1}
    )


_COUNT_ONE_MORE = {
    backend.dialect.name: _one_more(backend.insert(_COUNTS)) for backend in (postgresql, sqlite)
}
# The audit columns a hand-out's row takes from its request (handed_out_from's parameters).
_HANDOUT_PARAMETERS = ("actor", "actor_user_id", "action", "client_address", "outcome", "detail",
                       "request_id", "occurred_at")


def record(
    action: str,
    *,
    target: str | None = None,
    connection: Connection | None = None,
    outcome: str = "success",
    detail: str | None = None,
    actor: User | StaffActor | str | None = None,
) -> AuditEvent:
    """Add an audit event to the session (the caller's commit saves it with its change).

    ``actor`` defaults to the signed-in user, or ``system`` outside a request. ``detail`` is
    scrubbed of anything shaped like a credential before it is stored.
    """
    connection_id = connection.id if connection is not None else None
    event = AuditEvent(**_values(action, target, connection_id, outcome, detail, actor))
    db.session.add(event)
    return event


def insert_now(
    action: str,
    *,
    target: str | None = None,
    connection_id: int | None = None,
    outcome: str = "success",
    detail: str | None = None,
    actor: User | StaffActor | str | None = None,
) -> None:
    """Like :func:`record`, but sent at once as one INSERT on the session's connection.

    For hot paths (every token handed out): the same row, without the ORM unit of work,
    and for a connection known by its id alone. In a transaction the caller still commits
    and a rollback takes the event back with everything else.
    """
    values = _values(action, target, connection_id, outcome, detail, actor)
    values["occurred_at"] = utcnow()
    db.session.connection().execute(_INSERT, values)


def handed_out(*, target: str, connection_id: int, actor: str) -> None:
    """Audit a token handed out to ``actor`` (a service key), at once, on the session.

    By default its own ``token.handed_out`` row (:func:`insert_now`). With
    VAULT_AUDIT_HANDOUTS=hourly, one more in the count of this key, connection and hour,
    which the sealer turns into one audit row once the hour is over.
    """
    if current_app.config["VAULT_AUDIT_HANDOUTS"] != "hourly":
        insert_now("token.handed_out", target=target, connection_id=connection_id, actor=actor)
        return
    connection = db.session.connection()
    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    connection.execute(
        _COUNT_ONE_MORE[connection.dialect.name],
        {"actor": actor, "connection_id": connection_id, "hour": hour, "target": target,
         "count": 1},
    )


def handed_out_from(source: CTE, *, hourly: bool) -> Insert:
    """:func:`handed_out` as one INSERT ... SELECT, for each row of ``source`` (PostgreSQL).

    For a statement that hands a token out and audits it at once: ``source`` has the columns
    ``id`` (the connection's) and ``provider`` (the target), and a row only for a token being
    handed out. ``hourly``: VAULT_AUDIT_HANDOUTS=hourly's count instead of a row. Built once,
    executed with :func:`handed_out_parameters`.
    """
    if hourly:
        counted = select(bindparam("audit_actor", type_=_COUNTS.c.actor.type), source.c.id,
                         bindparam("audit_hour", type_=_COUNTS.c.hour.type), source.c.provider,
                         literal(1))
        return _one_more(postgresql.insert(_COUNTS).from_select(
            ["actor", "connection_id", "hour", "target", "count"], counted
        ))
    table = cast(Table, AuditEvent.__table__)
    values = [bindparam(f"audit_{name}", type_=table.c[name].type) for name in _HANDOUT_PARAMETERS]
    return insert(table).from_select(
        [*_HANDOUT_PARAMETERS, "target", "connection_id"],
        select(*values, source.c.provider, source.c.id),
    )


def handed_out_parameters(*, actor: str, now: datetime) -> dict:
    """The parameters of :func:`handed_out_from`'s statement for this request and moment."""
    values = _values("token.handed_out", None, None, "success", None, actor)
    values["occurred_at"] = now
    parameters = {f"audit_{name}": values[name] for name in _HANDOUT_PARAMETERS}
    parameters["audit_hour"] = now.replace(minute=0, second=0, microsecond=0)
    return parameters


@dataclass(frozen=True)
class StaffActor:
    """A staff member as an audit actor, detached from any session.

    For work done on someone's behalf in other threads (the batch refresh an admin starts):
    a :class:`User` row belongs to the request's session and must not cross threads.
    """

    user_id: int
    email: str

    @classmethod
    def of(cls, user: User) -> StaffActor:
        """The actor for ``user`` (or the ``current_user`` proxy standing for one)."""
        return cls(user.id, user.email)


def _values(
    action: str,
    target: str | None,
    connection_id: int | None,
    outcome: str,
    detail: str | None,
    actor: User | StaffActor | str | None,
) -> dict:
    if actor is None and has_request_context() and current_user.is_authenticated:
        actor = current_user
    actor_user = _user_row(actor)
    if actor_user is not None:
        actor = StaffActor.of(actor_user)
    if isinstance(actor, StaffActor):
        actor_name, actor_user_id = actor.email, actor.user_id
    else:
        actor_name, actor_user_id = (actor if isinstance(actor, str) else "system"), None
    return {
        "actor": actor_name,
        "actor_user_id": actor_user_id,
        "action": action,
        "target": target,
        "connection_id": connection_id,
        "client_address": request.remote_addr if has_request_context() else None,
        "outcome": outcome,
        "detail": redact(detail)[:1000] if detail else None,
        "request_id": current_request_id(),
    }


def _user_row(actor: object) -> User | None:
    # A User, or the current_user proxy standing for one.
    if hasattr(actor, "_get_current_object"):
        actor = actor._get_current_object()
    return actor if isinstance(actor, User) else None
