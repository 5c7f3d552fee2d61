"""The audit trail: one function, :func:`record`, for every security-relevant event."""

from __future__ import annotations

from flask import has_request_context, request
from flask_login import current_user

from vault.extensions import db
from vault.models import AuditEvent, Connection, User
from vault.redact import redact


def record(
    action: str,
    *,
    target: str | None = None,
    connection: Connection | None = None,
    outcome: str = "success",
    detail: str | None = None,
    actor: User | str | None = None,
) -> AuditEvent:
    """Add an audit event to the session (the caller's commit saves it with its change).

    ``actor`` defaults to the signed-in user, or ``system`` outside a request. ``detail`` is
    scrubbed of anything shaped like a credential before it is stored.
    """
    if actor is None and has_request_context() and current_user.is_authenticated:
        actor = current_user
    actor_user = _user_row(actor)
    if actor_user is not None:
        actor_name = actor_user.email
    else:
        actor_name = actor if isinstance(actor, str) else "system"
    event = AuditEvent(
        actor=actor_name,
        actor_user_id=actor_user.id if actor_user is not None else None,
        action=action,
        target=target,
        connection_id=connection.id if connection is not None else None,
        client_address=request.remote_addr if has_request_context() else None,
        outcome=outcome,
        detail=redact(detail)[:1000] if detail else None,
    )
    db.session.add(event)
    return event


def _user_row(actor: object) -> User | None:
    # A User, or the current_user proxy standing for one.
    if hasattr(actor, "_get_current_object"):
        actor = actor._get_current_object()
    return actor if isinstance(actor, User) else None
