"""The audit log page (newest first, filtered, 50 a page), its export, and the chain's status."""

from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, request, stream_with_context

from vault.models import utcnow
from vault.queries.audit import AuditFilters, audit_actions, list_audit, select_for_export
from vault.services.audit_chain import chain_state
from vault.services.audit_export import FORMATS, start_export
from vault.web.security import admin_required

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
        chain=chain_state(),
        export_formats=FORMATS,
    )


@bp.get("/export")
@admin_required
def export():
    """Download what the page's filters select, as CSV or JSON Lines, streamed."""
    format = request.args.get("format", "csv")
    if format not in FORMATS:
        abort(400, f"Unknown export format; choose one of: {', '.join(FORMATS)}.")
    selection = select_for_export(AuditFilters.from_args(request.args))
    started = start_export(selection, format)
    filename = started.filename(utcnow().date())
    return Response(
        stream_with_context(started.chunks),
        content_type=started.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )
