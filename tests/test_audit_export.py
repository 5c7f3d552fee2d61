"""Audit export: /audit/export and `vault audit-export`, filtered, safe, streamed, audited."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from tests.support.audit_rows import add_events
from vault.extensions import db
from vault.models import AuditEvent, utcnow

pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True),
    pytest.mark.shared_postgres_database,
]

DAY = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def exports() -> list[AuditEvent]:
    return list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "audit.exported").order_by(AuditEvent.id)
    ))


def test_admins_download_what_the_filters_select_as_csv(app, admin_client):
    add_events(3, action="token.handed_out", connection_id=7, occurred_at=DAY)
    add_events(2, action="connection.created", connection_id=7, occurred_at=DAY)
    add_events(4, action="token.handed_out", connection_id=8, occurred_at=DAY)

    response = admin_client.get("/audit/export?format=csv&action=token.handed_out&connection=7")
    assert response.status_code == 200
    assert response.content_type == "text/csv; charset=utf-8"
    today = utcnow().date().isoformat()
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="audit-{today}.csv"'
    )
    rows = csv_rows(response)
    picked = [(row["action"], row["connection_id"]) for row in rows]
    assert picked == [("token.handed_out", "7")] * 3
    assert rows[0]["occurred_at"] == DAY.isoformat()
    assert [row["detail"] for row in rows] == ["event 0", "event 1", "event 2"]  # oldest first
    assert "chain_mac" not in rows[0] and "chain_seq" in rows[0]


def test_the_export_is_audited_with_who_which_filters_and_how_many(app, admin_client):
    add_events(3, action="token.handed_out", connection_id=7)
    admin_client.get("/audit/export?format=jsonl&connection=7&actor=billing").get_data()
    (event,) = exports()
    assert event.actor == "admin@example.com"
    assert event.detail == "format=jsonl actor=billing connection=7 rows=3"


def test_days_filter_from_and_to_included_in_utc(app, admin_client):
    add_events(5, occurred_at=DAY - timedelta(days=2), step=timedelta(days=1))
    response = admin_client.get(
        f"/audit/export?format=csv&since={(DAY - timedelta(days=1)).date()}&until={DAY.date()}"
    )
    assert [row["detail"] for row in csv_rows(response)] == ["event 1", "event 2"]
    page = admin_client.get(f"/audit?since={DAY.date()}").get_data(as_text=True)
    assert "event 2" in page and "event 1" not in page
    assert f"since={DAY.date()}" in page  # the export link keeps the page's filters


def test_json_lines_hold_one_event_a_line(app, admin_client):
    add_events(2, actor="service:billing", occurred_at=DAY, target="ünïcode")
    response = admin_client.get("/audit/export?format=jsonl&actor=billing")
    assert response.content_type == "application/x-ndjson; charset=utf-8"
    assert response.headers["Content-Disposition"].endswith('.jsonl"')
    lines = response.get_data(as_text=True).splitlines()
    events = [json.loads(line) for line in lines]
    assert [event["detail"] for event in events] == ["event 0", "event 1"]
    assert events[0]["occurred_at"] == DAY.isoformat()
    assert events[0]["target"] == "ünïcode" and events[0]["chain_seq"] is None


def test_csv_cells_cannot_run_as_spreadsheet_formulas(app, admin_client):
    for text in ("=HYPERLINK(\"http://evil\")", "+1", "-2+3", "@SUM(A1)", "\tTAB", "fine"):
        add_events(1, actor=text, target=text)
    rows = csv_rows(admin_client.get("/audit/export?format=csv&action=token.handed_out"))
    assert [row["actor"] for row in rows] == [
        "'=HYPERLINK(\"http://evil\")", "'+1", "'-2+3", "'@SUM(A1)", "'\tTAB", "fine"
    ]
    assert rows[0]["target"].startswith("'=")


def test_only_admins_may_export(app, client, viewer_client):
    add_events(2)
    assert viewer_client.get("/audit/export?format=csv").status_code == 403
    assert "Download these" not in viewer_client.get("/audit").get_data(as_text=True)
    anonymous = client.get("/audit/export?format=csv")
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
    assert exports() == []


def test_an_unknown_format_is_a_clear_400(app, admin_client):
    response = admin_client.get("/audit/export?format=xlsx")
    assert response.status_code == 400
    assert "choose one of: csv, jsonl" in response.get_data(as_text=True)
    assert exports() == []


def test_the_page_offers_admins_the_download(app, admin_client):
    add_events(2, action="token.handed_out")
    page = admin_client.get("/audit?action=token.handed_out").get_data(as_text=True)
    assert "/audit/export?format=csv&amp;action=token.handed_out" in page
    assert "/audit/export?format=jsonl&amp;action=token.handed_out" in page


def test_cli_exports_days_to_stdout_or_a_file(app, runner, tmp_path):
    add_events(4, occurred_at=DAY - timedelta(days=3), step=timedelta(days=1))
    result = runner.invoke(args=["vault", "audit-export", "--since", str(DAY.date()),
                                 "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line)["detail"] for line in lines] == ["event 3"]
    assert "Exported 1 audit event(s) as jsonl." in result.stderr

    target = tmp_path / "audit.csv"
    result = runner.invoke(args=[
        "vault", "audit-export", "--since", str((DAY - timedelta(days=3)).date()),
        "--until", str((DAY - timedelta(days=2)).date()), "--format", "csv",
        "--output", str(target),
    ])
    assert result.exit_code == 0, result.output
    with target.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["detail"] for row in rows] == ["event 0", "event 1"]
    assert [event.actor for event in exports()] == ["cli", "cli"]
    assert runner.invoke(args=["vault", "audit-export", "--format", "csv"]).exit_code == 2


def peak_while_exporting(client, rows: int) -> tuple[int, int]:
    """(bytes delivered, peak bytes allocated) while streaming an export of ``rows`` rows."""
    db.session.execute(AuditEvent.__table__.delete())
    db.session.commit()
    add_events(rows, detail="x" * 200)
    tracemalloc.start()
    try:
        response = client.get("/audit/export?format=csv&action=token.handed_out", buffered=False)
        delivered = sum(len(chunk) for chunk in response.response)
        response.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return delivered, peak


@pytest.mark.slow
def test_memory_stays_bounded_whatever_the_number_of_rows(app, admin_client):
    small_size, small_peak = peak_while_exporting(admin_client, 3_000)
    large_size, large_peak = peak_while_exporting(admin_client, 30_000)
    assert large_size > 9 * small_size  # ten times the data went out...
    # ...through about the same memory: one batch at a time, never the whole export.
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)
    assert large_peak < large_size / 2, (large_peak, large_size)
