"""The audit log page: newest first, filtered by action, actor and connection, 50 a page."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from vault.queries.audit import AuditFilters, audit_actions, list_audit

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.get("")
def index():
    """One page of audit events matching the filters."""
    filters = AuditFilters.from_args(request.args)
    return render_template(
        "audit/index.html",
        page=list_audit(filters),
        filters=filters,
        action_choices=[(action, action) for action in audit_actions()],
    )
