"""Provider limits: reconnect-by dates from provider rules and stated expiries, the
providers-file keys and their errors, client-secret expiry, and where the dates show."""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from tests.support.refresh_fixtures import both_backends, load, make_connection
from tests.support.registry import load_registry
from vault.config import ConfigError
from vault.extensions import db as _db
from vault.grants import StoredValues
from vault.grants.limits import RENEWS_ITSELF, STOPPED, reconnect_deadline
from vault.models import Connection, ConnectionStatus, TokenKind, utcnow
from vault.providers.registry import PRESETS, Provider
from vault.queries.health import connections_to_reconnect_within
from vault.queries.providers import providers_with_client_secrets_expiring
from vault.refresh.engine import Outcome, refresh_now
from vault.services.connections import recompute_reconnect_by, update_reconnect_by
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database

GOOGLE = Provider(key="google", **PRESETS["google"])
GOOGLE_TESTING = Provider(key="google", **{**PRESETS["google"], "publishing_status": "testing"})
MICROSOFT = Provider(key="microsoft", **PRESETS["microsoft"])


def times(now, *, consented_days_ago=0.0, refreshed_days_ago=None, status="active"):
    consented = now - timedelta(days=consented_days_ago)
    refreshed = None if refreshed_days_ago is None else now - timedelta(days=refreshed_days_ago)
    return SimpleNamespace(status=status, consented_at=consented, created_at=consented,
                           last_refreshed_at=refreshed, reconnect_by=None)


REFRESHABLE = StoredValues(kinds=frozenset({"access", "refresh"}), refresh_token_valid=True)


# -- the rules ------------------------------------------------------------------------------


def test_a_testing_mode_google_connection_made_6_days_ago_is_due_tomorrow():
    now = utcnow()
    deadline = reconnect_deadline(
        "google", GOOGLE_TESTING, times(now, consented_days_ago=6, refreshed_days_ago=0.01),
        REFRESHABLE, now,
    )
    assert deadline.at == now - timedelta(days=6) + timedelta(days=7)
    assert deadline.at - now == timedelta(days=1)
    assert deadline.reason == "Google refresh tokens of apps in Testing end 7 days after consent"


def test_google_in_production_only_has_the_six_months_idle_rule():
    now = utcnow()
    deadline = reconnect_deadline(
        "google", GOOGLE, times(now, consented_days_ago=400, refreshed_days_ago=1),
        REFRESHABLE, now,
    )
    assert deadline.at == now - timedelta(days=1) + timedelta(days=180)
    assert deadline.reason == (
        "Google ends refresh tokens unused for 180 days: the next refresh moves this date")


def test_a_provider_stated_refresh_token_expiry_wins_when_earlier_than_the_preset_rule():
    now = utcnow()
    stated = now + timedelta(days=10)
    stored = StoredValues(kinds=frozenset({"access", "refresh"}), refresh_token_valid=True,
                          refresh_token_expires_at=stated)
    deadline = reconnect_deadline("microsoft", MICROSOFT, times(now, refreshed_days_ago=0),
                                  stored, now)
    assert (deadline.at, deadline.reason) == (stated, "the refresh token expires")
    later = StoredValues(kinds=stored.kinds, refresh_token_valid=True,
                         refresh_token_expires_at=now + timedelta(days=200))
    deadline = reconnect_deadline("microsoft", MICROSOFT, times(now, refreshed_days_ago=0),
                                  later, now)
    assert deadline.at == now + timedelta(days=90)
    assert deadline.reason.startswith("Microsoft ends refresh tokens unused for 90 days")


def test_lifetime_from_consent_and_the_client_secret():
    now = utcnow()
    provider = Provider(key="acme", title="Acme", type="oauth2", refresh_token_lifetime_days=30,
                        client_secret_expires_at=(now + timedelta(days=12)).date())
    deadline = reconnect_deadline("acme", provider, times(now, consented_days_ago=25),
                                  REFRESHABLE, now)
    assert deadline.at == now + timedelta(days=5)
    assert deadline.reason == "Acme refresh tokens end 30 days after consent"
    deadline = reconnect_deadline("acme", provider, times(now, consented_days_ago=1),
                                  REFRESHABLE, now)
    assert deadline.reason.startswith("Acme's client secret expires")
    assert deadline.at.date() == (now + timedelta(days=12)).date()


def test_pasted_keys_client_credentials_and_stopped_connections():
    now = utcnow()
    whatsapp = Provider(key="whatsapp", **PRESETS["whatsapp"])
    key_expiry = now + timedelta(days=3)
    stored = StoredValues(kinds=frozenset({"api_key"}), api_key_expires_at=key_expiry)
    assert reconnect_deadline("whatsapp", whatsapp, times(now), stored, now) == (
        type(reconnect_deadline("whatsapp", whatsapp, times(now), stored, now))(
            key_expiry, "the pasted key expires"))
    no_expiry = reconnect_deadline("whatsapp", whatsapp, times(now),
                                   StoredValues(kinds=frozenset({"api_key"})), now)
    assert no_expiry.at is None and "states no expiry" in no_expiry.reason
    partner = Provider(key="p", title="P", type="oauth2", grant_type="client_credentials")
    renews = reconnect_deadline("p", partner, times(now), StoredValues(frozenset({"access"})), now)
    assert (renews.at, renews.reason) == (None, RENEWS_ITSELF)
    stopped = reconnect_deadline("google", GOOGLE, times(now, status="needs_reconnect"),
                                 REFRESHABLE, now)
    assert (stopped.at, stopped.reason) == (now, STOPPED)
    gone = reconnect_deadline("google", GOOGLE, times(now, status="disconnected"),
                              REFRESHABLE, now)
    assert (gone.at, gone.reason) == (None, None)


def test_an_oauth_connection_without_a_refresh_token_stops_with_its_access_token():
    now = utcnow()
    github = Provider(key="github", **PRESETS["github"])
    expires = now + timedelta(hours=8)
    stored = StoredValues(kinds=frozenset({"access"}), access_token_expires_at=expires)
    deadline = reconnect_deadline("github", github, times(now), stored, now)
    assert (deadline.at, deadline.reason) == (
        expires, "the access token expires and nothing can renew it")
    forever = reconnect_deadline("github", github, times(now),
                                 StoredValues(kinds=frozenset({"access"})), now)
    assert (forever.at, forever.reason) == (
        None, "no known deadline: the access token states no expiry")


# -- the stored date follows refreshes --------------------------------------------------------


@pytest.fixture
def limits_config(app_config, providers_file, stub):
    """``acme`` forgets refresh tokens unused for 30 days; ``stated`` has a long lifetime."""
    providers_file.write_text(
        stub.providers_toml("acme") + "refresh_token_idle_days = 30\n"
        + stub.providers_toml("stated") + "refresh_token_lifetime_days = 3650\n",
        encoding="utf-8",
    )
    app_config.update(VAULT_PROVIDER_TIMEOUT_SECONDS=3)
    return app_config


@pytest.fixture
def limits_app(limits_config, app):
    return app


@both_backends
def test_an_idle_days_rule_moves_with_each_refresh(limits_app, db, stub, admin_user):
    connection_id = make_connection(stub, consented_at=utcnow() - timedelta(days=20),
                                    last_refreshed_at=utcnow() - timedelta(days=20))
    connection = load(connection_id)
    update_reconnect_by(connection, limits_app.extensions["providers"].get("acme"), utcnow())
    db.session.commit()
    before = load(connection_id).reconnect_by
    assert before is not None and before - utcnow() < timedelta(days=10, minutes=1)
    assert refresh_now(load(connection_id), admin_user).outcome is Outcome.REFRESHED
    first = load(connection_id)
    assert first.reconnect_by == first.last_refreshed_at + timedelta(days=30)
    assert first.reconnect_reason == (
        "Acme ends refresh tokens unused for 30 days: the next refresh moves this date")
    assert refresh_now(load(connection_id), admin_user).outcome is Outcome.REFRESHED
    second = load(connection_id)
    assert second.reconnect_by == second.last_refreshed_at + timedelta(days=30)
    assert second.reconnect_by >= first.reconnect_by > before


@both_backends
def test_the_refresh_token_expiry_the_provider_states_is_stored_and_wins(
    limits_app, db, stub, admin_user
):
    stub.refresh_token_expires_in = 86400
    connection_id = make_connection(stub, provider="stated", consented_at=utcnow())
    assert refresh_now(load(connection_id), admin_user).outcome is Outcome.REFRESHED
    connection = load(connection_id)
    refresh = token_vault.token(connection, TokenKind.REFRESH)
    assert connection.reconnect_by == refresh.expires_at
    assert connection.reconnect_reason == "the refresh token expires"


@both_backends
def test_a_refused_refresh_marks_the_date_now_and_recompute_fills_old_rows(
    limits_app, db, stub, admin_user
):
    connection_id = make_connection(stub, refresh_token="rt-unknown")
    assert refresh_now(load(connection_id), admin_user).outcome is Outcome.NEEDS_RECONNECT
    stopped = load(connection_id)
    assert stopped.reconnect_reason == STOPPED and stopped.reconnect_by <= utcnow()
    other = make_connection(stub, subject="other", consented_at=utcnow())
    assert load(other).reconnect_by is None  # made before any rule ran
    assert recompute_reconnect_by(utcnow()) >= 1
    assert load(other).reconnect_reason.startswith("Acme ends refresh tokens unused")
    soon = connections_to_reconnect_within(utcnow(), timedelta(days=31))
    assert [c.id for c in soon] == [other]  # the stopped one is not "expiring"
    assert connections_to_reconnect_within(utcnow(), timedelta(days=29)) == []


# -- the providers file -----------------------------------------------------------------------


def test_providers_file_limit_keys(tmp_path):
    registry = load_registry(tmp_path, """
[google]
preset = "google"
client_id = "i"
client_secret = "s"
publishing_status = "testing"
client_secret_expires_at = "2027-06-30"
[acme]
type = "oauth2"
client_id = "i"
client_secret = "s"
authorize_url = "https://acme.example/a"
token_url = "https://acme.example/t"
refresh_token_lifetime_days = 60
refresh_token_idle_days = 14
client_secret_expires_at = 2027-01-15
[partner]
preset = "api_key"
check_url = "https://partner.example/v1/me"
check_auth = "header:X-Api-Key"
""")
    google, acme, partner = (registry.get(k) for k in ("google", "acme", "partner"))
    assert google.publishing_status == "testing" and google.refresh_token_idle_days == 180
    assert google.client_secret_expires_at == date(2027, 6, 30)
    assert (acme.refresh_token_lifetime_days, acme.refresh_token_idle_days) == (60, 14)
    assert acme.client_secret_expires_at == date(2027, 1, 15)
    assert (partner.check_url, partner.check_auth) == (
        "https://partner.example/v1/me", "header:X-Api-Key")
    assert load_registry(tmp_path, '[v]\npreset = "voicenter"\n').get("v").check_auth == (
        "query:code")


OAUTH = ('type = "oauth2"\nclient_id = "i"\nclient_secret = "s"\n'
         'authorize_url = "https://a.example/a"\ntoken_url = "https://a.example/t"\n')


@pytest.mark.parametrize(("table", "message"), [
    (OAUTH + "refresh_token_idle_days = 0\n", "refresh_token_idle_days: must be a whole number"),
    (OAUTH + "refresh_token_lifetime_days = \"7\"\n", "refresh_token_lifetime_days: must be"),
    (OAUTH + "refresh_token_lifetime_days = true\n", "refresh_token_lifetime_days: must be"),
    (OAUTH + "refresh_token_idle_days = 4000\n", "from 1 to 3650"),
    ('preset = "voicenter"\nrefresh_token_idle_days = 5\n', "only OAuth providers"),
    (OAUTH + 'publishing_status = "testing"\n', "only Google apps have one"),
    ('preset = "google"\nclient_id = "i"\nclient_secret = "s"\npublishing_status = "beta"\n',
     "publishing_status: must be one of production, testing"),
    (OAUTH + 'client_secret_expires_at = "30/06/2027"\n', 'must be a date, "YYYY-MM-DD"'),
    (OAUTH + "client_secret_expires_at = 2027-06-30T10:00:00\n", "must be a date"),
    ('preset = "whatsapp"\nclient_secret_expires_at = "2027-06-30"\n',
     "only OAuth providers have a client secret"),
    ('preset = "api_key"\ncheck_url = "https://p.example/me"\ncheck_auth = "cookie"\n',
     'check_auth: must be "bearer", "header:NAME" or "query:NAME"'),
    ('preset = "api_key"\ncheck_auth = "bearer"\n', "check_url, which is not set"),
    ('preset = "api_key"\ncheck_url = "ftp://p.example/me"\n', "is not an http(s) URL"),
    (OAUTH + 'check_url = "https://a.example/me"\n', "check_url: only API-key providers"),
])
def test_providers_file_limit_errors_name_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match="providers file .*\\[p\\] ") as error:
        load_registry(tmp_path, "[p]\n" + table)
    assert message in str(error.value)


# -- client secrets ---------------------------------------------------------------------------


def secret_providers(tmp_path, *days):
    now = utcnow()
    text = "".join(
        f"[p{n}]\n" + OAUTH.replace('"i"', f'"i{n}"')
        + f'title = "Acme {n}"\nclient_secret_expires_at = "{(now + timedelta(days=d)).date()}"\n'
        for n, d in enumerate(days)
    )
    return load_registry(tmp_path, text), now


def test_client_secrets_expiring_within_30_days_say_so(tmp_path, app):
    registry, now = secret_providers(tmp_path, 20, 45, -3, 1, 0)
    found = providers_with_client_secrets_expiring(now, registry=registry)
    assert [expiry.message for expiry in found] == [
        "Acme 2's client secret expired 3 days ago",
        "Acme 4's client secret expires today",
        "Acme 3's client secret expires tomorrow",
        "Acme 0's client secret expires in 20 days",
    ]


def test_health_and_providers_pages_show_the_client_secret_expiry(
    app_config, providers_file, make_app
):
    day = (utcnow() + timedelta(days=20)).date()
    providers_file.write_text(
        "[acme]\n" + OAUTH + f'title = "Acme"\nclient_secret_expires_at = "{day}"\n',
        encoding="utf-8")
    from tests.support.builders import login, make_user

    configured = make_app()
    with configured.app_context():
        _db.create_all()
        try:
            make_user("viewer@example.com", role="viewer")
            client = configured.test_client()
            login(client, "viewer@example.com")
            for page in ("/health", "/"):
                assert "Acme&#39;s client secret expires in 20 days" in client.get(page).text
        finally:
            _db.session.remove()
            _db.drop_all()


# -- pages and the API ------------------------------------------------------------------------


@both_backends
def test_list_sorts_by_reconnect_soonest_and_the_detail_page_says_why(
    limits_app, db, stub, viewer_client
):
    now = utcnow()
    later = make_connection(stub, subject="later", reconnect_by=now + timedelta(days=20),
                            reconnect_reason="Acme ends refresh tokens unused for 30 days")
    sooner = make_connection(stub, subject="sooner", reconnect_by=now + timedelta(days=2),
                             reconnect_reason="the refresh token expires")
    make_connection(stub, subject="none", reconnect_reason=RENEWS_ITSELF)
    page = viewer_client.get("/connections?sort=reconnect").text
    assert "Reconnect soonest" in page and "Reconnect by" in page
    assert page.index("sooner@example.com") < page.index("later@example.com") < page.index(
        "none@example.com")
    detail = viewer_client.get(f"/connections/{sooner}").text
    assert "Reconnect by" in detail and "the refresh token expires" in detail
    assert "Check now" not in detail  # viewers get no button
    assert later


def test_the_api_lists_reconnect_by_and_its_reason(limits_app, db, stub, client):
    from vault.services.service_keys import create_key

    when = utcnow().replace(microsecond=0) + timedelta(days=3)
    connection_id = make_connection(stub, reconnect_by=when,
                                    reconnect_reason="the refresh token expires")
    make_connection(stub, subject="open", reconnect_reason=RENEWS_ITSELF)
    _key, plaintext = create_key("limits", [], set())
    db.session.commit()
    answer = client.get("/api/v1/connections", headers={"Authorization": f"Bearer {plaintext}"})
    by_id = {c["id"]: c for c in answer.get_json()["connections"]}
    assert by_id[connection_id]["reconnect_by"] == when.isoformat().replace("+00:00", "Z")
    assert by_id[connection_id]["reconnect_reason"] == "the refresh token expires"
    others = [c for i, c in by_id.items() if i != connection_id]
    assert others[0]["reconnect_by"] is None and others[0]["reconnect_reason"] == RENEWS_ITSELF


@both_backends
def test_the_health_chart_has_a_reconnect_series(limits_app, db, stub, viewer_client):
    make_connection(stub, reconnect_by=utcnow() + timedelta(days=2),
                    reconnect_reason="the refresh token expires")
    page = viewer_client.get("/health").text
    assert 'class="chart-reconnect"' in page and "to reconnect</title>" in page
    assert "1 connection must be reconnected by a person" in page


def test_seed_demo_gives_every_connection_a_reconnect_by_date_or_says_why(app):
    from vault.cli.demo import seed_demo

    seed_demo(400, seed=13)
    rows = _db.session.execute(select(Connection.provider, Connection.status,
                                      Connection.reconnect_by, Connection.reconnect_reason)).all()
    for provider, status, when, reason in rows:
        if status == ConnectionStatus.DISCONNECTED.value:
            continue
        assert reason, (provider, status)
        assert when is not None or reason.startswith("no "), (provider, reason)
    reasons = {reason for *_rest, reason in rows if reason}
    for expected in ("Google refresh tokens of apps in Testing end 7 days after consent",
                     "the refresh token expires", "the pasted key expires", RENEWS_ITSELF,
                     "Microsoft ends refresh tokens unused for 90 days: the next refresh moves "
                     "this date", STOPPED):
        assert expected in reasons
    assert any(reason.startswith("Acme's client secret expires") for reason in reasons)
