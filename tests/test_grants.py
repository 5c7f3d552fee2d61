"""One renewability policy (vault/grants), every place that asks it, all agreeing.

MATRIX below is the table: every kind of connection, the grant that renews it (or "none"),
the words of the reason when none can, and the token API's answer once its token has
expired. Each test is one place, checked against the whole table at once:

(a) ``grant_for`` in Python; (b) the dashboard list's SQL ``renewable`` column (with its
health and "Next refresh"); (c) the ``refresh-due`` claim (``due_statement``); (d) the detail
page's "Refresh now" button and the list's "Next refresh" cell; (e) the refresh engine;
(f) the token API. A failure prints the kinds on which that place disagrees with the table.
"""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.support.refresh_fixtures import both_backends, load, make_connection
from vault.grants import StoredValues, due_at, grant_for
from vault.models import Connection, Token, TokenKind, utcnow
from vault.queries.connection_list import ConnectionFilters, list_connections
from vault.refresh.batch import due_statement
from vault.refresh.engine import Outcome, refresh_now
from vault.services import service_keys
from vault.tokens.store import token_vault

# The shared refresh fixtures, bound here so pytest finds them by name (no star import).
pytestmark = pytest.mark.shared_postgres_database

HOUR = 3600
NONE = "none"

#  kind                        grant                 reason, when none (its first words)  API
MATRIX = [
    ("fresh",                    "refresh_token",      None,                                  200),
    ("expiring",                 "refresh_token",      None,                                  200),
    ("expired",                  "refresh_token",      None,                                  200),
    ("no refresh token",         NONE,                 "no refresh token is stored",          409),
    ("refresh token expired",    NONE,                 "the refresh token expired",           409),
    ("revoked",                  NONE,                 "the provider refused the grant",      409),
    ("API key",                  NONE,                 "its API key is used as it is",        503),
    ("key exchange",             "key_exchange",       None,                                  200),
    ("API secret, no token_url", NONE,                 "its API key is used as it is",        503),
    ("client credentials",       "client_credentials", None,                                  200),
    ("client credentials, rt",   "refresh_token",      None,                                  200),
    ("client credentials, spent rt", "client_credentials", None,                              200),
    ("provider removed",         NONE,                 "provider retired is no longer in",    503),
    ("disconnected",             NONE,                 "the connection is disconnected",      503),
]
EXPECTED = {kind: grant for kind, grant, _, _ in MATRIX}
RENEWABLE = {kind: grant != NONE for kind, grant in EXPECTED.items()}
REASONS = {kind: reason for kind, _, reason, _ in MATRIX}
API_STATUS = {kind: status for kind, _, _, status in MATRIX}

# How each kind is built: provider, status, and stored kinds -> seconds to expiry (None: no
# expiry). Every value is one the stub would accept, so a wrong provider call would succeed
# and show up only in the stub's count.
RECIPES = {
    "fresh": ("acme", "active", {"access": 3 * HOUR, "refresh": None}),
    "expiring": ("acme", "active", {"access": 60, "refresh": None}),
    "expired": ("acme", "active", {"access": -HOUR, "refresh": None}),
    "no refresh token": ("acme", "active", {"access": -HOUR}),
    "refresh token expired": ("acme", "active", {"access": -HOUR, "refresh": -60}),
    # needs_reconnect: built like "expired", then its tokens are flagged invalid
    "revoked": ("acme", "needs_reconnect", {"access": -HOUR, "refresh": None}),
    "API key": ("voicenter", "active", {"api_key": None}),
    "key exchange": ("greeninvoice", "active", {"access": -HOUR, "api_key": None,
                                                "api_secret": None}),
    "API secret, no token_url": ("keyonly", "active", {"access": -HOUR, "api_key": None,
                                                       "api_secret": None}),
    "client credentials": ("machine", "active", {"access": -HOUR}),
    # a usable refresh token goes first; an expired one gives way to the client secret
    "client credentials, rt": ("machine", "active", {"access": -HOUR, "refresh": None}),
    "client credentials, spent rt": ("machine", "active", {"access": -HOUR, "refresh": -60}),
    "provider removed": ("retired", "active", {"access": -HOUR, "refresh": None}),
    # tokens kept (a disconnect deletes them), so that only the status rules it out
    "disconnected": ("acme", "disconnected", {"access": -HOUR, "refresh": None}),
}
assert set(RECIPES) == set(EXPECTED)

EXTRA_PROVIDERS = """
[keyonly]
title = "Key and secret, no exchange"
type = "api_key"
fields = { api_key = "API key", api_secret = "API secret" }
"""


@pytest.fixture
def matrix_providers(stub_config, providers_file, stub):
    """The stub's providers (acme, greeninvoice, voicenter, ...), a client-credentials one
    and an API-key provider that stores a secret but has no token_url."""
    machine = stub.providers_toml("machine", grant_type="client_credentials")
    machine = "\n".join(line for line in machine.splitlines() if "authorize_url" not in line)
    providers_file.write_text(
        providers_file.read_text() + machine + "\n" + EXTRA_PROVIDERS, encoding="utf-8"
    )


@pytest.fixture
def vault_app(matrix_providers, app):
    """The app, its providers file written before it starts; the test runs in its context."""
    return app


def build(db, stub, kinds=None) -> dict[str, int]:
    """One committed connection of each kind (or of ``kinds``); their ids by kind."""
    key_id, key_secret = stub.issue_api_key()
    values = {"access": None, "api_key": key_id, "api_secret": key_secret}
    ids = {}
    for kind in kinds or RECIPES:
        provider, status, stored = RECIPES[kind]
        connection = Connection(provider=provider, account_subject=kind, status=status)
        db.session.add(connection)
        db.session.flush()
        for token_kind, seconds in stored.items():
            if token_kind == "refresh":
                value = stub.issue_refresh_token()
            else:
                value = values[token_kind] or f"at-0-{kind}"
            expires = None if seconds is None else utcnow() + timedelta(seconds=seconds)
            token_vault.store(connection, token_kind, value, expires_at=expires)
        if status == "needs_reconnect":
            token_vault.mark_invalid(connection, "invalid_grant: Token has been revoked.")
        db.session.commit()
        ids[kind] = connection.id
    return ids


def grant_of(app, connection_id: int):
    connection = load(connection_id)
    return grant_for(
        connection.provider, app.extensions["providers"].get(connection.provider),
        connection.status, StoredValues.of(connection.tokens), utcnow(),
    )


def calls(stub) -> int:
    """Requests that reached the provider, on any of its endpoints."""
    return len(stub.requests)


# -- (a) Python ------------------------------------------------------------------------------


@both_backends
def test_a_grant_for_in_python(vault_app, db, stub):
    ids = build(db, stub)
    grants = {kind: grant_of(vault_app, ids[kind]) for kind in ids}
    assert {kind: grant.name for kind, grant in grants.items()} == EXPECTED
    assert {kind: grant.renewable for kind, grant in grants.items()} == RENEWABLE
    for kind, grant in grants.items():
        if grant.renewable:
            assert grant.reason is None, kind
        else:
            assert grant.reason.startswith(REASONS[kind]), (kind, grant.reason)
            # only a person can fix it exactly when the token API says "needs_reconnect"
            assert grant.needs_person == (API_STATUS[kind] == 409), kind


# -- (b) SQL: the dashboard list -------------------------------------------------------------


@both_backends
def test_b_sql_renewable_column_of_the_list(vault_app, db, stub):
    ids = build(db, stub)
    now = utcnow()
    rows = {row.id: row for row in list_connections(ConnectionFilters(), now, size=100).items}
    assert {kind: bool(rows[ids[kind]].renewable) for kind in ids} == RENEWABLE
    buffer = timedelta(seconds=vault_app.config["VAULT_REFRESH_BUFFER_SECONDS"])
    for kind, connection_id in ids.items():
        row = rows[connection_id]
        # the "Next refresh" column: a time exactly for what can be renewed
        due = due_at(bool(row.renewable), row.expires_at, row.next_refresh_at, buffer)
        assert (due is not None) == RENEWABLE[kind], kind
        if row.status == "active" and row.expires_at is not None and row.expires_at <= now:
            health = "refreshable" if RENEWABLE[kind] else "needs_reconnect"
            assert row.health == health, kind


# -- (c) the refresh-due claim ---------------------------------------------------------------


@both_backends
def test_c_refresh_due_claims_exactly_the_renewable(vault_app, db, stub, runner):
    ids = build(db, stub)
    # Ten days: every access token stored is due, so only renewability decides.
    claimed = {c.id for c in db.session.scalars(due_statement(timedelta(days=10)))}
    assert {kind: ids[kind] in claimed for kind in ids} == RENEWABLE
    # Within the buffer: the same, less "fresh", valid for hours yet.
    buffer = vault_app.config["VAULT_REFRESH_BUFFER_SECONDS"]
    due_now = {c.id for c in db.session.scalars(due_statement(buffer))}
    assert {kind: ids[kind] in due_now for kind in ids} == {
        kind: renewable and kind != "fresh" for kind, renewable in RENEWABLE.items()
    }

    result = runner.invoke(args=["vault", "refresh-due", "--within", str(10 * 86400), "--json"])
    report = json.loads(result.stdout)
    renewable = sum(RENEWABLE.values())
    assert (report["due"], report["refreshed"], report["problems"]) == (renewable, renewable, [])
    assert result.exit_code == 0 and calls(stub) == renewable


@both_backends
def test_c_refresh_due_exits_0_when_nothing_is_renewable(vault_app, db, stub, runner):
    # The defect: a secret stored for an API-key provider without a token_url was claimed,
    # failed, and made every run exit 1.
    build(db, stub, [kind for kind, renewable in RENEWABLE.items() if not renewable])
    for args in ([], ["--within", str(10 * 86400)]):
        result = runner.invoke(args=["vault", "refresh-due", *args])
        assert result.exit_code == 0, result.output
        assert "Refreshed 0, failed 0, needs reconnect 0, skipped 0 (0 due" in result.output
    assert calls(stub) == 0


# -- (d) the pages ---------------------------------------------------------------------------


@both_backends
def test_d_detail_page_button_and_list_column(vault_app, db, stub, admin_client):
    ids = build(db, stub)
    shown = {}
    for kind, connection_id in ids.items():
        response = admin_client.get(f"/connections/{connection_id}")
        page = html.unescape(response.get_data(as_text=True))
        shown[kind] = "Refresh now" in page
        reason = grant_of(vault_app, connection_id).reason
        if kind == "disconnected":  # no actions at all; the status says why
            assert 'id="not-renewable"' not in page
        elif RENEWABLE[kind]:
            assert 'id="not-renewable"' not in page, kind
        else:
            assert f"Cannot be refreshed: {reason}." in page, kind
    assert shown == RENEWABLE

    listed = admin_client.get("/connections").get_data(as_text=True)
    headings = re.findall(r"<th[^>]*>(.*?)</th>", listed, re.S)
    column = next(n for n, heading in enumerate(headings) if heading.startswith("Next refresh"))
    next_refresh = {}
    for row in re.findall(r"<tr>(.*?)</tr>", listed.split("<tbody>", 1)[1], re.S):
        connection_id = int(re.search(r'href="/connections/(\d+)"', row).group(1))
        cell = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[column]
        next_refresh[connection_id] = "—" not in cell
    assert {kind: next_refresh[ids[kind]] for kind in ids} == RENEWABLE


# -- (e) the engine --------------------------------------------------------------------------


@both_backends
def test_e_engine_asks_the_provider_only_when_renewable(vault_app, db, stub):
    ids = build(db, stub)
    asked, outcomes = {}, {}
    for kind, connection_id in ids.items():
        reason = grant_of(vault_app, connection_id).reason
        before = calls(stub)
        result = refresh_now(load(connection_id), "system")
        asked[kind] = calls(stub) - before
        outcomes[kind] = result.outcome
        if not RENEWABLE[kind]:
            assert result.message, kind  # says why
            if kind != "revoked":  # a refused grant says what the provider said
                assert result.message == reason, kind
    assert asked == {kind: int(renewable) for kind, renewable in RENEWABLE.items()}
    assert outcomes == {
        kind: Outcome.REFRESHED if RENEWABLE[kind]
        else Outcome.NEEDS_RECONNECT if API_STATUS[kind] == 409
        else Outcome.UNAVAILABLE
        for kind in ids
    }


# -- (f) the token API -----------------------------------------------------------------------


@both_backends
def test_f_token_api_on_an_expired_token(vault_app, db, stub, client):
    ids = build(db, stub)
    _, key = service_keys.create_key("matrix", [], set())
    # Every token expired, a pasted key too: the API must renew it or say why it cannot.
    db.session.execute(
        update(Token)
        .where(Token.kind.in_([TokenKind.ACCESS.value, TokenKind.API_KEY.value]))
        .values(expires_at=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()
    statuses, asked = {}, {}
    for kind, connection_id in ids.items():
        before = calls(stub)
        response = client.get(f"/api/v1/connections/{connection_id}/access-token",
                              headers={"Authorization": f"Bearer {key}"})
        statuses[kind], asked[kind] = response.status_code, calls(stub) - before
        body = response.json
        if response.status_code == 200:
            assert body["access_token"] == stub.issued_access_tokens[-1], kind
        elif kind == "provider removed":  # refused before any grant is asked for
            assert body["error"] == "provider_not_configured", body  # tests/test_api_abuse.py
        else:
            error = "needs_reconnect" if response.status_code == 409 else "token_unavailable"
            assert body["error"] == error and body["message"], (kind, body)
    assert statuses == {**API_STATUS, "provider removed": 409}
    assert asked == {kind: int(renewable) for kind, renewable in RENEWABLE.items()}


# -- the due query (was test_find_expiring in tests/test_store.py) ---------------------------


@both_backends
def test_due_statement_soonest_first(vault_app, db, stub):
    now = utcnow()

    def expiring_in(subject, seconds, *, refresh=True, **fields) -> int:
        connection_id = make_connection(stub, subject=subject, expires_in=seconds, **fields)
        if not refresh:
            token_vault.delete(load(connection_id), [TokenKind.REFRESH])
            db.session.commit()
        return connection_id

    soon = expiring_in("soon", 60)
    sooner = expiring_in("sooner", -30)
    later = expiring_in("later", 7200)
    expiring_in("no-refresh-token", 60, refresh=False)
    expiring_in("broken", 60, status="needs_reconnect")
    expiring_in("backing-off", 60, next_refresh_at=now + timedelta(minutes=5))
    due_again = expiring_in("due-again", 90, next_refresh_at=now - timedelta(minutes=1))

    def due(within, limit=None):
        statement = due_statement(within, now)
        if limit is not None:
            statement = statement.limit(limit)
        return [connection.id for connection in db.session.scalars(statement)]

    assert due(300) == [sooner, soon, due_again]
    assert due(timedelta(seconds=300), limit=1) == [sooner]
    assert due(timedelta(hours=3)) == [sooner, soon, due_again, later]
