"""Holding under attack (issue 17): a database outage, foreign Host headers, sessions of
disabled users, password resets, where forms may post, the SQLite file's mode, and
connections whose provider left the providers file."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.builders import ACME_PROVIDER, DEFAULT_PASSWORD, csrf_token, login
from tests.support.refresh_fixtures import both_backends
from vault import PROJECT_ROOT, devenv
from vault.extensions import db
from vault.models import AuditEvent, Connection, User
from vault.oauth.clients import connect_client

pytestmark = pytest.mark.shared_postgres_database
SESSION_COOKIE = "__Host-session"
PROVIDERS = ACME_PROVIDER + """
[idp]
type = "oidc"
server_metadata_url = "https://idp.example/.well-known/openid-configuration"
client_id = "c"
client_secret = "s"
staff_login = true
allowed_domains = ["example.com"]

[machine]
type = "oauth2"
grant_type = "client_credentials"
client_id = "c"
client_secret = "s"
token_url = "https://machine.example/token"

[voicenter]
preset = "voicenter"
"""


@pytest.fixture
def app_config(app_config, providers_file):
    providers_file.write_text(PROVIDERS, encoding="utf-8")
    return app_config


def audited(action: str) -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# -- a database outage: 503 with Retry-After on every route, rendered without the database -----


def requests_of_every_route(app):
    """(method, path) for every route and method, with arguments that would be valid."""
    values = {"connection_id": "1", "provider_key": "acme", "key": "idp", "path": "x",
              "filename": "css/app.css", "token": "A" * 43, "link_id": "1",
              "grant_id": "1",  # a device grant (issue 16) that does not exist
              "email": "someone@example.com", "key_id": "1", "user_id": "1"}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: values[m[1]], rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, path


@pytest.fixture
def down(app, make_app, database_url, tmp_path, closed_port):
    """The app on the same kind of database, unreachable: a closed port, or a folder that is
    not there; its providers at the closed port too, so that nothing waits on the network."""
    if database_url.startswith("postgresql"):
        dead = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/vault"
    else:
        dead = f"sqlite:///{tmp_path / 'gone' / 'vault.db'}"
    offline = tmp_path / "offline.toml"
    offline.write_text(PROVIDERS.replace("https://", f"http://127.0.0.1:{closed_port}/"))
    return make_app(DATABASE_URL=dead, VAULT_PROVIDERS_FILE=str(offline))


@both_backends
def test_every_route_answers_503_with_retry_after_while_the_database_is_down(
    admin_client, down
):
    token = csrf_token(admin_client, "/")
    cookie = admin_client.get_cookie(SESSION_COOKIE).value
    signed_in = down.test_client()
    signed_in.set_cookie(SESSION_COOKIE, cookie)
    checked = 0

    for method, path in requests_of_every_route(down):
        response = signed_in.open(
            path, method=method, data={"csrf_token": token},
            headers={"Authorization": "Bearer tvk_" + "x" * 40},
        )
        response.close()
        if path.startswith("/static/") or path == "/api/v1/openapi.json":
            assert response.status_code == 200  # files, needing no database
            continue
        assert response.status_code == 503, (method, path, response.status_code)
        if path.startswith("/api/") or path == "/healthz":
            assert response.is_json, (method, path)
            continue
        assert response.headers["Retry-After"] == "5", (method, path)
        page = response.get_data(as_text=True)
        assert "Database unavailable · Token Vault" in page, (method, path)
        assert "cannot reach its database" in page and "Signed in as" not in page
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        checked += 1
    assert checked >= 15


@both_backends
def test_an_anonymous_visitor_meets_no_server_error_but_the_outage_page(down):
    client = down.test_client()
    token = csrf_token(client)  # the sign-in page needs no database

    for method, path in requests_of_every_route(down):
        response = client.open(path, method=method, data={
            "csrf_token": token, "email": "admin@example.com", "password": DEFAULT_PASSWORD,
        })
        response.close()
        assert response.status_code < 500 or response.status_code == 503, (method, path)
        if response.status_code == 503 and not response.is_json:
            assert response.headers["Retry-After"] == "5", (method, path)
    assert client.post("/login", data={
        "csrf_token": token, "email": "admin@example.com", "password": DEFAULT_PASSWORD,
    }).status_code == 503


# -- Host headers: with VAULT_BASE_URL only its host (and loopback) is answered ---------------


def test_with_a_base_url_a_foreign_host_header_is_refused(app_config, make_app):
    app = make_app(VAULT_BASE_URL="https://vault.example.com:8443")
    client = app.test_client()

    assert app.config["TRUSTED_HOSTS"] == ["vault.example.com", "localhost", "127.0.0.1"]
    for base in ("https://vault.example.com:8443", "http://localhost", "http://127.0.0.1:5000"):
        assert client.get("/login", base_url=base).status_code == 200, base
    for base in ("https://evil.example", "https://vault.example.com.evil.example"):
        refused = client.get("/login", base_url=base)
        assert refused.status_code == 400, base
        assert refused.mimetype == "text/plain"
        assert "evil" not in refused.get_data(as_text=True)


def test_without_a_base_url_any_host_is_answered(client):
    assert client.get("/login", base_url="https://anything.example").status_code == 200


def test_make_run_pins_the_base_url_to_where_it_serves():
    commands = subprocess.run(
        ["make", "-n", "run", "HOST=127.0.0.2", "PORT=5001"], cwd=PROJECT_ROOT,
        capture_output=True, text=True, check=True,
    ).stdout
    assert "-m vault.devenv --base-url http://127.0.0.2:5001" in commands


def test_the_first_run_writes_the_base_url_and_later_runs_leave_it(
    tmp_path, monkeypatch, capsys
):
    for name in ("SECRET_KEY", "ENCRYPTION_SECRET", "VAULT_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(devenv, "PROJECT_ROOT", str(tmp_path))
    env_file = tmp_path / "instance" / ".env"

    assert devenv.main(["--base-url", "http://127.0.0.1:5000"]) == 0
    assert "VAULT_BASE_URL=http://127.0.0.1:5000\n" in env_file.read_text()
    assert "Set VAULT_BASE_URL=http://127.0.0.1:5000" in capsys.readouterr().out
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    first = env_file.read_text()
    assert devenv.main(["--base-url", "http://127.0.0.1:8000"]) == 0
    assert env_file.read_text() == first


def test_a_checkout_set_up_before_keeps_following_the_request(tmp_path, monkeypatch):
    for name in ("SECRET_KEY", "ENCRYPTION_SECRET", "VAULT_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(devenv, "PROJECT_ROOT", str(tmp_path))
    (tmp_path / "instance").mkdir()
    existing = f"SECRET_KEY={'k' * 40}\nENCRYPTION_SECRET={'e' * 40}\n"
    (tmp_path / "instance" / ".env").write_text(existing)

    assert devenv.main(["--base-url", "http://127.0.0.1:5000"]) == 0
    assert (tmp_path / "instance" / ".env").read_text() == existing


@pytest.mark.parametrize("base_url", ["http://0.0.0.0:5000", "http://[::]:5000"])
def test_a_wildcard_address_is_no_base_url(tmp_path, monkeypatch, base_url):
    monkeypatch.delenv("VAULT_BASE_URL", raising=False)
    assert devenv.ensure_dev_base_url(tmp_path / "instance", tmp_path, base_url) is False
    assert not (tmp_path / "instance" / ".env").exists()


# -- sessions: disabling ends them for good; a password reset ends them too ------------------


@both_backends
def test_a_copied_cookie_stays_dead_after_its_user_is_disabled_and_enabled_again(
    app, runner, viewer_client
):
    copied = viewer_client.get_cookie(SESSION_COOKIE).value

    assert runner.invoke(args=["users", "disable", "viewer@example.com"]).exit_code == 0
    assert runner.invoke(args=["users", "enable", "viewer@example.com"]).exit_code == 0

    thief = app.test_client()
    thief.set_cookie(SESSION_COOKIE, copied)
    assert thief.get("/").headers["Location"].startswith("/login")
    assert login(app.test_client(), "viewer@example.com").status_code == 302


@both_backends
def test_reset_password_prints_a_one_time_password_and_ends_every_session(
    app, runner, viewer_client, viewer_user
):
    result = runner.invoke(args=["users", "reset-password", "Viewer@Example.com"])

    assert result.exit_code == 0, result.output
    password = re.fullmatch(r"  password: (\S{20,}) .*", result.output.splitlines()[-1])[1]
    assert viewer_client.get("/").headers["Location"].startswith("/login")
    client = app.test_client()
    assert login(client, "viewer@example.com", DEFAULT_PASSWORD).status_code == 200
    assert login(client, "viewer@example.com", password).status_code == 302
    assert client.get("/").headers["Location"].startswith("/account/password")
    [event] = audited("user.password_reset")
    assert (event.actor, event.target) == ("cli", "viewer@example.com")
    assert password not in (event.detail or "")
    user = db.session.get(User, viewer_user.id)
    assert user.must_change_password and password not in user.password_hash


@both_backends
def test_reset_password_of_nobody_fails_in_one_line(runner):
    result = runner.invoke(args=["users", "reset-password", "nobody@example.com"])

    assert result.exit_code == 1
    assert result.output == "Error: there is no user with e-mail nobody@example.com\n"
    assert audited("user.password_reset") == []


# -- Content-Security-Policy: forms post here; Connect and SSO go on to the provider ---------


def test_forms_may_post_to_this_site_and_on_to_the_providers_authorization_origins(
    app, client, viewer_client
):
    expected = (
        "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self' https://acme.example https://idp.example"
    )
    assert client.get("/login").headers["Content-Security-Policy"] == expected
    assert viewer_client.get("/").headers["Content-Security-Policy"] == expected
    # JSON holds no forms
    assert client.get("/healthz").headers["Content-Security-Policy"].endswith("form-action 'self'")


def test_a_discovered_authorization_endpoint_elsewhere_is_allowed_once_known(app, client):
    provider = app.extensions["providers"].get("idp")
    with app.test_request_context():  # what reading the discovery document leaves behind
        connect_client(provider).server_metadata["authorization_endpoint"] = (
            "https://login.idp-cdn.example/authorize"
        )

    policy = client.get("/login").headers["Content-Security-Policy"]

    assert policy.endswith(
        "form-action 'self' https://acme.example https://idp.example https://login.idp-cdn.example"
    )


def test_a_discovery_document_cannot_write_into_the_policy(app, client):
    provider = app.extensions["providers"].get("idp")
    with app.test_request_context():  # a hostile or broken discovery document
        connect_client(provider).server_metadata["authorization_endpoint"] = (
            "https://evil.example;script-src * 'unsafe-inline'/authorize"
        )

    policy = client.get("/login").headers["Content-Security-Policy"]

    assert "script-src" not in policy and "unsafe-inline" not in policy
    assert policy.endswith("form-action 'self' https://acme.example https://idp.example")


# -- the SQLite database file is the owner's only ------------------------------------------


def test_a_new_sqlite_database_file_is_readable_by_its_owner_only(tmp_path, make_app):
    path = tmp_path / "fresh.db"
    previous = os.umask(0o022)  # the common default, under which SQLite makes it 0644
    try:
        app = make_app(DATABASE_URL=f"sqlite:///{path}")
        with app.app_context():
            db.create_all()
    finally:
        os.umask(previous)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_sqlite_file_keeps_its_mode(tmp_path, make_app):
    path = tmp_path / "shared.db"
    path.touch(mode=0o640)
    path.chmod(0o640)

    make_app(DATABASE_URL=f"sqlite:///{path}")

    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o640


# -- connections whose provider is no longer in the providers file --------------------------


@both_backends
def test_a_connection_of_a_provider_no_longer_configured_is_marked(viewer_client):
    kept = Connection(provider="acme", account_subject="a", account_email="kept@example.com")
    gone = Connection(provider="retired", account_subject="b", account_email="gone@example.com")
    db.session.add_all([kept, gone])
    db.session.commit()

    listing = viewer_client.get("/connections").get_data(as_text=True)
    rows = {row.split("@example.com")[0][-4:]: row for row in listing.split("<tr>")[2:]}

    assert "<code>retired</code> <span class=\"muted\">(not in the providers file)</span>" in (
        rows["gone"]
    )
    assert "not in the providers file" not in rows["kept"]
    detail = viewer_client.get(f"/connections/{gone.id}").get_data(as_text=True)
    assert "(not in the providers file)" in detail
