"""Owner, purpose and tags: the rules, the connection page's form, its consumers, the list's
filters.

The people page and the default owner of a new connection are in test_people.py; the
browser checks (axe, 1280 px) in tests/browser/test_ownership_browser.py.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.support.builders import ACME_PROVIDER, csrf_token
from vault.extensions import db
from vault.models import (
    AuditEvent,
    Connection,
    ConnectionConsumer,
    ConnectionTag,
    utcnow,
)
from vault.services import ownership
from vault.services.ownership import OwnershipError
from vault.services.service_keys import create_key, record_consumer

PROVIDERS = ACME_PROVIDER + """
[voicenter]
preset = "voicenter"
"""


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(PROVIDERS, encoding="utf-8")
    return app_config


def add(provider="acme", subject=None, *, owner=None, tags=(), purpose=None, **fields):
    """A committed connection with ``owner``, ``tags`` and ``purpose`` set directly."""
    number = db.session.scalar(select(func.count(Connection.id))) + 1
    connection = Connection(
        provider=provider, account_subject=subject or f"subject-{number}",
        account_email=f"user{number}@example.com", owner_email=owner, purpose=purpose, **fields,
    )
    db.session.add(connection)
    db.session.flush()
    db.session.add_all(ConnectionTag(connection_id=connection.id, tag=tag) for tag in tags)
    db.session.commit()
    return connection


def audit_rows(action: str) -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
    ))


def listed_ids(client, query: str) -> set[int]:
    response = client.get(f"/connections{query}")
    assert response.status_code == 200
    body = response.get_data(as_text=True).split("<tbody>", 1)[-1]
    return {int(n) for n in re.findall(r'href="/connections/(\d+)"', body)}


def post_details(client, connection_id: int, **values):
    token = csrf_token(client, f"/connections/{connection_id}")
    return client.post(f"/connections/{connection_id}/details",
                       data={"csrf_token": token, **values})


# -- the rules ---------------------------------------------------------------------------------


def test_owner_is_an_email_lower_cased_or_none(app):
    assert ownership.owner_of("  Ops.Lead@Example.COM ") == "ops.lead@example.com"
    assert ownership.owner_of("") is None and ownership.owner_of(None) is None
    for bad in ("not an address", "a@b@c", "someone@", "evil\u202e@example.com"):
        with pytest.raises(OwnershipError, match="is not an e-mail address"):
            ownership.owner_of(bad)


def test_tags_are_short_labels_lower_cased_deduplicated_and_few(app):
    assert ownership.tags_of(["Billing", "billing", "calendar-2", "ops_team"]) == [
        "billing", "calendar-2", "ops_team"]
    assert ownership.split_tags(" billing, calendar  ops,,") == ["billing", "calendar", "ops"]
    assert ownership.tag_of("X" * 32) == "x" * 32
    for bad in ("-leading", "_x", "a b", "x" * 33, "ünicode", "semi;colon", ""):
        with pytest.raises(OwnershipError, match="is not a tag"):
            ownership.tag_of(bad)
    with pytest.raises(OwnershipError, match="At most 10 tags; 11"):
        ownership.tags_of([f"t{n}" for n in range(11)])


def test_purpose_is_one_line_of_at_most_500_characters(app):
    assert ownership.purpose_of("  Sends\n invoices   nightly. ") == "Sends invoices nightly."
    assert ownership.purpose_of("   ") is None
    assert len(ownership.purpose_of("x" * 500)) == 500
    with pytest.raises(OwnershipError, match="at most 500 characters; this one has 501"):
        ownership.purpose_of("x" * 501)
    with pytest.raises(OwnershipError, match="control or formatting"):
        ownership.purpose_of("pay \u202egnp.exe")


# -- the connection page -----------------------------------------------------------------------


def test_viewers_see_owner_purpose_and_tags_but_no_form(viewer_client):
    connection = add(owner="lead@example.com", tags=("billing", "ops"),
                     purpose="Sends invoices nightly.")
    page = viewer_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    assert '<a href="/people/lead@example.com">lead@example.com</a>' in page
    assert "Sends invoices nightly." in page
    assert 'href="/connections?tag=billing"' in page and 'href="/connections?tag=ops"' in page
    assert "Save details" not in page and 'name="owner"' not in page


def test_a_viewer_cannot_change_them(viewer_client):
    connection = add(owner="lead@example.com")
    response = post_details(viewer_client, connection.id, owner="me@example.com",
                            purpose="Mine now.", tags="stolen")
    assert response.status_code == 403
    db.session.expire_all()
    assert db.session.get(Connection, connection.id).owner_email == "lead@example.com"
    assert db.session.scalar(select(func.count()).select_from(ConnectionTag)) == 0
    assert audit_rows("connection.owner_changed") == []


def test_an_admin_changes_them_audited_with_before_and_after(admin_client):
    connection = add(owner="lead@example.com", tags=("old",))
    page = admin_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    for label in ("Owner", "Purpose", "Tags"):
        assert re.search(rf"<label for=\"\w+\">{label}</label>", page), label
    assert 'value="lead@example.com"' in page and 'value="old"' in page

    response = post_details(admin_client, connection.id, owner=" Next.Owner@Example.com ",
                            purpose="Books meetings for sales.", tags="Calendar, sales calendar")
    assert response.status_code == 302
    db.session.expire_all()
    changed = db.session.get(Connection, connection.id)
    assert changed.owner_email == "next.owner@example.com"
    assert changed.purpose == "Books meetings for sales."
    assert ownership.current_tags(changed) == ["calendar", "sales"]
    [owner_row] = audit_rows("connection.owner_changed")
    assert owner_row.actor == "admin@example.com" and owner_row.connection_id == connection.id
    assert owner_row.detail == "owner: lead@example.com -> next.owner@example.com"
    [details_row] = audit_rows("connection.details_changed")
    assert details_row.detail == ('purpose: none -> "Books meetings for sales."; '
                                  "tags: [old] -> [calendar, sales]")
    assert "Saved: owner, purpose, tags." in admin_client.get(
        response.headers["Location"]).get_data(as_text=True)

    again = post_details(admin_client, connection.id, owner="next.owner@example.com",
                         purpose="Books meetings for sales.", tags="sales calendar")
    assert again.status_code == 302
    assert len(audit_rows("connection.owner_changed")) == 1
    assert len(audit_rows("connection.details_changed")) == 1


@pytest.mark.parametrize("field, values, message", [
    ("owner", {"owner": "not-an-address"}, "is not an e-mail address"),
    ("tags", {"tags": "good, b@d"}, "is not a tag"),
    ("tags", {"tags": " ".join(f"t{n}" for n in range(11))}, "At most 10 tags"),
    ("purpose", {"purpose": "x" * 501}, "at most 500 characters"),
])
def test_a_bad_value_changes_nothing_and_is_shown_by_its_field(admin_client, field, values,
                                                              message):
    connection = add(owner="lead@example.com", tags=("keep",), purpose="Kept.")
    form = {"owner": "new@example.com", "purpose": "New purpose.", "tags": "new", **values}
    response = post_details(admin_client, connection.id, **form)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert re.search(rf'id="{field}-errors">\s*<p class="field-error" role="alert">[^<]*'
                     rf"{re.escape(message)}", page), page
    db.session.expire_all()
    kept = db.session.get(Connection, connection.id)
    assert (kept.owner_email, kept.purpose) == ("lead@example.com", "Kept.")
    assert ownership.current_tags(kept) == ["keep"]
    assert audit_rows("connection.owner_changed") == []
    assert audit_rows("connection.details_changed") == []


def test_the_form_needs_its_csrf_token(admin_client):
    connection = add(owner="lead@example.com")
    response = admin_client.post(f"/connections/{connection.id}/details",
                                 data={"owner": "x@example.com", "purpose": "", "tags": ""})
    assert response.status_code == 400
    db.session.expire_all()
    assert db.session.get(Connection, connection.id).owner_email == "lead@example.com"


def test_an_empty_owner_means_none(admin_client):
    connection = add(owner="lead@example.com")
    assert post_details(admin_client, connection.id, owner="", purpose="",
                        tags="").status_code == 302
    db.session.expire_all()
    assert db.session.get(Connection, connection.id).owner_email is None
    assert audit_rows("connection.owner_changed")[0].detail == "owner: lead@example.com -> none"


def test_the_page_lists_the_service_keys_that_fetched_its_token(admin_client, app):
    connection = add(owner="lead@example.com")
    other = add(owner="lead@example.com")
    billing, key = create_key("billing-sync", [], {"acme", "voicenter"})
    reports, _ = create_key("reports", [], {"acme", "voicenter"})
    db.session.commit()
    record_consumer(billing.id, connection.id)
    record_consumer(reports.id, other.id)
    db.session.commit()
    earlier = utcnow() - timedelta(hours=3)
    db.session.execute(ConnectionConsumer.__table__.update().where(
        ConnectionConsumer.service_key_id == billing.id).values(last_fetched_at=earlier))
    db.session.commit()

    page = admin_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    used_by = page.split('id="consumers"', 1)[1].split("<h2", 1)[0]
    assert f'<a href="/service-keys/{billing.id}">billing-sync</a>' in used_by
    assert f"<code>{billing.key_prefix}…</code>" in used_by and "3 h ago" in used_by
    assert "reports" not in used_by  # another connection's consumer
    assert key not in page and key[len(billing.key_prefix):] not in page

    lonely = add()
    page = admin_client.get(f"/connections/{lonely.id}").get_data(as_text=True)
    assert "No service key has fetched this connection's token yet." in page


def test_a_revoked_consumer_is_marked(admin_client):
    connection = add()
    row, _ = create_key("old-sync", [], {"acme"})
    db.session.flush()
    record_consumer(row.id, connection.id)
    row.revoked_at = utcnow()
    db.session.commit()
    used_by = admin_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    assert re.search(r"old-sync</a> <span class=\"badge badge-revoked\">revoked</span>", used_by)


# -- the connections list ----------------------------------------------------------------------


def test_the_list_shows_owner_and_tags_and_folds_the_last_error_under_the_status(viewer_client):
    connection = add(owner="lead@example.com", tags=("billing", "ops"),
                     last_error="x" * 200, status="error")
    page = viewer_client.get("/connections").get_data(as_text=True)
    headings = re.findall(r"<th scope=\"col\">(.*?)</th>", page, re.S)
    assert [re.sub(r"<[^>]+>", "", h) for h in headings[:4]] == [
        "Account and provider", "Owner", "Tags", "Status and last error"]
    assert "Last error</th>" not in page
    row = page.split("<tbody>", 1)[1]
    assert '<a href="/people/lead@example.com">lead@example.com</a>' in row
    assert '<a class="tag" href="/connections?tag=billing">billing</a>' in row
    error = re.search(r'<small class="error-text last-error" title="(x+)">(x+)\.\.\.</small>', row)
    assert error and len(error.group(1)) == 200 and len(error.group(2)) < 90
    assert connection.id in listed_ids(viewer_client, "")


def test_filters_by_owner_and_tag_combine_with_the_others(viewer_client):
    lead_billing = add(owner="lead@example.com", tags=("billing",))
    lead_calendar = add(owner="lead@example.com", tags=("calendar", "sales"))
    other_billing = add(owner="other@example.com", tags=("billing", "sales"))
    lead_voicenter = add("voicenter", owner="lead@example.com", tags=("billing",))
    untagged = add(owner=None)

    assert listed_ids(viewer_client, "?owner=lead@example.com") == {
        lead_billing.id, lead_calendar.id, lead_voicenter.id}
    assert listed_ids(viewer_client, "?owner=LEAD@Example.com") == {
        lead_billing.id, lead_calendar.id, lead_voicenter.id}
    assert listed_ids(viewer_client, "?tag=billing") == {
        lead_billing.id, other_billing.id, lead_voicenter.id}
    assert listed_ids(viewer_client, "?tag=sales&owner=lead@example.com") == {lead_calendar.id}
    assert listed_ids(viewer_client, "?tag=billing&provider=voicenter") == {lead_voicenter.id}
    assert listed_ids(viewer_client, f"?tag=billing&q=user{other_billing.id}") == {
        other_billing.id}
    assert listed_ids(viewer_client, "?tag=nosuchtag") == set()
    assert listed_ids(viewer_client, "?tag=b@d!") == set()
    assert untagged.id in listed_ids(viewer_client, "")
    page = viewer_client.get("/connections?tag=billing&owner=lead@example.com").get_data(
        as_text=True)
    assert 'value="billing"' in page and 'value="lead@example.com"' in page
    assert "Showing 1–2 of 2 connections" in page


def test_filters_are_kept_across_pages(viewer_client):
    for _ in range(55):
        add(owner="lead@example.com", tags=("billing",))
    add(owner="lead@example.com")
    page = viewer_client.get("/connections?tag=billing&owner=lead@example.com").get_data(
        as_text=True)
    assert "Showing 1–50 of 55 connections" in page
    [next_link] = re.findall(r'href="([^"]+)" rel="next"', page)
    assert "tag=billing" in next_link and "owner=lead@example.com" in next_link


def test_tag_filter_reads_the_tag_index(app):
    """The tag filter is a semi-join on connection_tags(tag, connection_id), not a scan."""
    from vault.queries.connection_list import ConnectionFilters, list_conditions

    add(owner="a@example.com", tags=("billing",))
    filters = ConnectionFilters.from_args({"tag": "billing", "owner": "a@example.com"})
    statement = select(Connection.id).where(*list_conditions(filters))
    compiled = str(statement.compile(dialect=db.engine.dialect,
                                     compile_kwargs={"literal_binds": True}))
    plan = " ".join(str(row) for row in db.session.execute(
        db.text(f"EXPLAIN QUERY PLAN {compiled}")))
    tag_index = "ix_connection_tags_tag_connection_id"
    assert f"SEARCH connection_tags USING COVERING INDEX {tag_index}" in plan, plan
    assert "SEARCH connections USING COVERING INDEX ix_connections_owner_email" in plan, plan

