"""The dashboard pages through the test client: overview, connections list, health, audit.

Scale (query counts, no decryption) is in test_dashboard_scale.py, the manual refresh in
test_dashboard_refresh.py, the browser in tests/browser.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.support.builders import ACME_PROVIDER, post_form
from vault.extensions import db
from vault.models import AuditEvent, Connection, Token, utcnow
from vault.queries.connections import Health
from vault.queries.counts import health_counts
from vault.tokens.store import token_vault
from vault.web.filters import format_relative

HOUR = 3600
PROVIDERS = ACME_PROVIDER + """
[voicenter]
preset = "voicenter"

[greeninvoice]
preset = "greeninvoice"
"""


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(PROVIDERS, encoding="utf-8")
    return app_config


def add(provider="acme", subject=None, *, status="active", failures=0, error=None, **tokens):
    """A committed connection; ``tokens`` maps kind -> seconds until expiry (None: unknown)."""
    number = db.session.query(Connection).count() + 1
    connection = Connection(
        provider=provider, account_subject=subject or f"subject-{number}",
        account_email=f"user{number}@example.com", account_name=f"User {number}",
        status=status, failure_count=failures, last_error=error,
    )
    db.session.add(connection)
    db.session.flush()
    for kind, seconds in tokens.items():
        expires = None if seconds is None else utcnow() + timedelta(seconds=seconds)
        token_vault.store(connection, kind, f"{kind}-value-{number:08d}", expires_at=expires)
    db.session.commit()
    return connection


def page_text(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def table_rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", body, re.S)


def one_of_each_health():
    """One connection in every situation the health expression tells apart."""
    made = {
        "active": add(access=3 * 86400, refresh=None),
        "unknown expiry": add(access=None, refresh=None),
        "expiring": add(access=2 * HOUR, refresh=None),
        "expired, refresh token": add(access=-HOUR, refresh=None),
        "expired, no refresh token": add(access=-HOUR),
        "expired, refresh token expired": add(access=-HOUR, refresh=-60),
        "expired, key exchange": add("greeninvoice", access=-HOUR, api_key=None, api_secret=None),
        # A secret stored for a provider without a token exchange renews nothing.
        "expired, API secret, no exchange": add(
            "voicenter", access=-HOUR, api_key=None, api_secret=None
        ),
        "API key, no expiry": add("voicenter", api_key=None),
        "API key expiring": add("voicenter", api_key=HOUR),
        "refused": add(status="needs_reconnect", error="invalid_grant: revoked", access=-HOUR),
        "backing off": add(failures=2, error="503 from the provider", access=HOUR, refresh=None),
        "error status": add(status="error", error="boom", access=5 * 86400),
        "disconnected": add(status="disconnected"),
    }
    return {name: connection.id for name, connection in made.items()}


EXPECTED = {
    "active": "active", "unknown expiry": "active", "expiring": "expiring",
    "expired, refresh token": "refreshable", "expired, no refresh token": "needs_reconnect",
    "expired, refresh token expired": "needs_reconnect", "expired, key exchange": "refreshable",
    "expired, API secret, no exchange": "needs_reconnect",
    "API key, no expiry": "active", "API key expiring": "expiring", "refused": "needs_reconnect",
    "backing off": "error", "error status": "error", "disconnected": "disconnected",
}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_health_is_computed_alike_for_counts_and_list_filters(admin_client):
    ids = one_of_each_health()
    counts = health_counts()
    totals = {state: sum(by_provider[state] for by_provider in counts.values())
              for state in {s.value for s in Health}}
    assert totals == {state: list(EXPECTED.values()).count(state) for state in totals}
    for state in Health:
        listed = page_text(admin_client.get(f"/connections?status={state.value}"))
        shown = {int(i) for i in re.findall(r'href="/connections/(\d+)"', listed)}
        assert shown == {ids[name] for name, health in EXPECTED.items() if health == state.value}


def test_providers_overview_counts_by_health_and_offers_connect(admin_client):
    one_of_each_health()
    db.session.add(Connection(provider="retired", account_subject="x", status="active"))
    db.session.commit()
    html = page_text(admin_client.get("/"))
    assert 'aria-current="page">Providers<' in html
    assert "OAuth 2.0" in html and "API key" in html
    assert 'aria-label="Connect Acme"' in html
    assert 'aria-label="Add credentials for Voicenter"' in html
    assert "All connections: 15" in html
    # each count links to the list filtered to it
    assert 'href="/connections?status=needs_reconnect&amp;provider=acme"' in html
    assert re.search(r"Needs reconnect</span> <span class=\"count\">3</span>", html)
    # a provider key the data knows but the file no longer does is still counted
    assert "retired" in html and "not in the providers file" in html


def test_viewers_see_the_pages_without_admin_buttons(viewer_client):
    connection = add(access=HOUR, refresh=None)
    assert "Connect Acme" not in page_text(viewer_client.get("/"))
    detail = page_text(viewer_client.get(f"/connections/{connection.id}"))
    assert "Refresh now" not in detail and "Disconnect" not in detail
    assert "Refresh all expiring" not in page_text(viewer_client.get("/health"))


def test_connections_list_shows_expiries_relative_and_absolute(admin_client):
    connection = add(access=42 * 60 + 30, refresh=20 * 86400)
    db.session.execute(update(Connection).values(last_refreshed_at=utcnow() - timedelta(hours=3),
                                                 last_error="an old problem"))
    db.session.commit()
    [row] = table_rows(page_text(admin_client.get("/connections")))
    access = token_vault.token(connection, "access").expires_at
    assert f'<time datetime="{access.isoformat(timespec="seconds")}">' in row
    assert "in 42 min" in row and access.strftime("%Y-%m-%d %H:%M UTC") in row
    assert "in 19 days" in row and "3 h ago" in row and "an old problem" in row
    assert "Expiring within 24 h" in row
    assert "in 37 min" in row  # next refresh: 5 minutes (the buffer) before it expires


def test_list_filters_search_sort_and_paginate_keeping_the_filters(admin_client):
    for n in range(60):
        add(subject=f"acme-{n}", access=(n + 1) * HOUR, refresh=None)
    add("voicenter", subject="Front Desk", api_key=None)
    db.session.execute(update(Connection).where(Connection.account_subject == "acme-7")
                       .values(account_email="Ops.Team@Example.com"))
    db.session.commit()

    first = page_text(admin_client.get("/connections?provider=acme"))
    assert "Showing 1–50 of 60 connections" in first
    emails = re.findall(r'href="/connections/\d+">([^<]+)</a>', first)
    assert emails[0] == "user1@example.com"  # soonest expiry first
    following = re.search(r'href="(/connections\?provider=acme&amp;after=[\w-]+)" rel="next"',
                          first)
    assert following, "a Next link keeping the filter"
    second = page_text(admin_client.get(following.group(1).replace("&amp;", "&")))
    assert len(table_rows(second)) == 10 and "Showing 51–60 of 60" in second
    assert '<option value="acme" selected>' in second
    assert 'rel="next"' not in second and ">First page</a>" in second

    found = page_text(admin_client.get("/connections?q=ops.TEAM"))
    assert len(table_rows(found)) == 1 and "Ops.Team@Example.com" in found
    assert len(table_rows(page_text(admin_client.get("/connections?q=front")))) == 1
    assert len(table_rows(page_text(admin_client.get("/connections?q=user 61")))) == 1  # name
    assert len(table_rows(page_text(admin_client.get("/connections?q=ACME-1")))) == 11  # subject
    assert "No connections match." in page_text(admin_client.get("/connections?q=100%25"))
    by_account = page_text(admin_client.get("/connections?sort=account&provider=voicenter"))
    assert len(table_rows(by_account)) == 1 and "Voicenter" in by_account
    # nonsense falls back to defaults instead of failing
    odd = page_text(admin_client.get("/connections?page=abc&status=bogus&sort=x&provider="))
    assert "Showing 1–50 of 61 connections" in odd
    unreadable = page_text(admin_client.get("/connections?after=not-a-cursor"))
    assert "Showing 1–50 of 61 connections" in unreadable


def test_filter_form_fields_are_labelled(admin_client):
    add(access=HOUR)
    html = page_text(admin_client.get("/connections"))
    for field, label in (("provider", "Provider"), ("status", "Status"), ("q", "Search accounts"),
                         ("sort", "Sort by")):
        assert f'<label for="filter-{field}">{label}</label>' in html
        assert f'id="filter-{field}"' in html
    assert '<form method="get"' in html


def test_detail_shows_scopes_history_and_survives_an_undecryptable_value(admin_client):
    connection = add(access=HOUR, refresh=None)
    connection.scopes_requested = "openid email calendar"
    connection.scopes_granted = "openid email extra"
    for n in range(25):
        db.session.add(AuditEvent(actor="system", action="token.refreshed", outcome="success",
                                  connection_id=connection.id, detail=f"event {n}",
                                  occurred_at=utcnow() - timedelta(minutes=100 - n)))
    db.session.execute(update(Token).where(Token.kind == "refresh").values(ciphertext=b"\x01junk"))
    db.session.commit()
    html = page_text(admin_client.get(f"/connections/{connection.id}"))
    assert "<strong>undecryptable</strong>" in html and "••••" in html
    assert '<code>calendar</code> <span class="badge badge-not_granted">not granted</span>' in html
    assert "<code>extra</code>" in html and "(not asked for)" in html
    details = re.findall(r"event (\d+)", html)
    assert details == [str(n) for n in range(24, 4, -1)]  # newest first, the last 20
    assert f'href="/audit?connection={connection.id}"' in html
    assert "Refresh now" in html


def test_health_page_lists_what_needs_attention_keys_and_the_chart(admin_client):
    one_of_each_health()
    db.session.execute(update(Token).where(Token.kind == "api_secret").values(key_id="0badc0de"))
    db.session.commit()
    html = page_text(admin_client.get("/health"))
    assert 'aria-current="page">Health<' in html
    assert "Expiring within 24 hours (2)" in html and "Needs reconnect (4)" in html
    assert "Failing (2)" in html
    assert "invalid_grant: revoked" in html and "expired, and nothing stored can renew it" in html
    assert "503 from the provider" in html
    current = token_vault.cipher.current_key_id
    key_row = r"<code>{}</code></td>\s*<td>{}</td>\s*<td><span class=\"badge badge-{}\">"
    assert re.search(key_row.format(current, r"\d+", "current"), html)
    assert re.search(key_row.format("0badc0de", 2, "unknown"), html)
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in svg and "<title id=\"chart-title\">" in svg and "<desc" in svg
    assert len(re.findall(r"<rect ", svg)) >= 28 and "style=" not in svg
    # the two expiring, the one active within 7 days, and the one backing off
    assert "4 credentials of active connections expire" in svg


def test_expiry_chart_counts_land_in_their_slot(app):
    add(access=30 * 60)
    add(access=3 * 86400)
    add(access=30 * 86400)  # beyond the chart
    from vault.queries.health import expiry_buckets

    now = utcnow()
    buckets = expiry_buckets(now)
    assert len(buckets) == 32 and buckets[0].start.hour == 0
    assert sum(bucket.count for bucket in buckets) == 2
    soon = next(b for b in buckets if b.start <= now + timedelta(minutes=30) < b.end)
    assert soon.count == 1 and all(b.past for b in buckets if b.end <= now)


def test_refresh_all_expiring_is_for_admins_and_reports_the_batch(admin_client, viewer_client):
    denied = post_form(viewer_client, "/health/refresh-due", {"within": "300"},
                       token_from="/health")
    assert denied.status_code == 403
    done = post_form(admin_client, "/health/refresh-due", {"within": "3600"}, token_from="/health",
                     follow_redirects=True)
    text = page_text(done)
    assert "Refresh of everything expiring within 1 hour: Refreshed 0, failed 0" in text
    assert admin_client.post("/health/refresh-due", data={"within": "300"}).status_code == 400


def test_audit_page_filters_by_action_actor_and_connection_and_paginates(admin_client):
    connection = add(access=HOUR)
    for n in range(60):
        db.session.add(AuditEvent(actor="cron@example.com" if n % 2 else "system",
                                  action="token.refreshed" if n < 55 else "token.refresh_failed",
                                  outcome="success" if n < 55 else "failure",
                                  connection_id=connection.id if n < 10 else None))
    db.session.commit()
    html = page_text(admin_client.get("/audit"))
    assert 'aria-current="page">Audit<' in html
    assert re.search(r'<option value="token.refresh_failed">token.refresh_failed</option>', html)
    assert '<option value="auth.sign_in">' in html  # signing in is audited too
    assert "Showing 1–50 of 61 events" in html
    assert re.search(r'href="/audit\?after=[\w-]+" rel="next"', html)
    failed = page_text(admin_client.get("/audit?action=token.refresh_failed"))
    assert "Showing 1–5 of 5 events" in failed
    assert len(table_rows(page_text(admin_client.get("/audit?actor=CRON")))) == 30
    by_connection = page_text(admin_client.get(f"/audit?connection={connection.id}&actor=system"))
    assert "Showing 1–5 of 5 events" in by_connection
    refreshed = page_text(admin_client.get("/audit?action=token.refreshed"))
    following = re.search(r'href="(/audit\?action=token.refreshed&amp;after=[\w-]+)"', refreshed)
    assert following, "a Next link keeping the filter"
    second = page_text(admin_client.get(following.group(1).replace("&amp;", "&")))
    assert second.count("<tr>") == 6 and "Showing 51–55 of 55 events" in second


def test_empty_states_teach_what_to_do(admin_client):
    html = page_text(admin_client.get("/"))
    assert "No connections yet" in html and "Connect the first account" in html
    html = page_text(admin_client.get("/connections"))
    assert "To connect the first account" in html


def test_no_providers_file_explains_how_to_write_one(admin_user, make_app, providers_file):
    from tests.support.builders import login

    providers_file.write_text("", encoding="utf-8")
    bare = make_app()
    client = bare.test_client()
    assert login(client, admin_user.email).status_code == 302
    html = page_text(client.get("/"))
    assert "No providers are configured yet" in html
    assert "providers.example.toml" in html and "VAULT_PROVIDERS_FILE" in html
    assert str(providers_file) in html
    assert '[google]\npreset = "google"' in html
    assert "http://localhost/connect/google/callback" in html


def test_pages_have_no_inline_script_or_style(admin_client):
    connection = add(access=HOUR, refresh=None)
    for path in ("/", "/connections", f"/connections/{connection.id}", "/health", "/audit"):
        html = page_text(admin_client.get(path))
        assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", html), path


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(30, "in under a minute"), (-30, "just now"), (42 * 60 + 5, "in 42 min"),
     (-5 * 60, "5 min ago"), (3 * HOUR + 5, "in 3 h"), (-47 * HOUR, "47 h ago"),
     (3 * 86400 + 5, "in 3 days"), (-10 * 86400, "10 days ago")],
)
def test_relative_times_read_as_people_say_them(seconds, text):
    now = utcnow()
    assert format_relative(now + timedelta(seconds=seconds), now) == text
