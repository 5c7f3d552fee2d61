"""The web security baseline: sign-in everywhere, roles, CSRF, headers, cookies, proxies."""

from __future__ import annotations

import re

import pytest
from flask import Blueprint
from flask_login import current_user
from sqlalchemy import select

from tests.support.builders import DEFAULT_PASSWORD, csrf_token, post_form
from vault import audit
from vault.extensions import db
from vault.models import AuditEvent
from vault.web.security import (
    CONTENT_SECURITY_POLICY,
    PUBLIC_ENDPOINTS,
    SELF_AUTHENTICATING_BLUEPRINTS,
    admin_required,
)


@pytest.fixture
def app(app):
    """The app plus a blueprint made the way any new one would be: nothing security-related.

    ``/probe/record`` is an admin action that writes an audit row, so a test can see whether
    it ran; ``/api/probe`` stands for the JSON API.
    """
    probe = Blueprint("probe", __name__)

    @probe.get("/probe")
    def page():
        return "<p>probe page</p>"

    @probe.post("/probe/record")
    @admin_required
    def record():
        audit.record("probe.recorded", actor=current_user)  # as the connect views do
        db.session.commit()
        return "recorded", 201

    @probe.get("/api/probe")
    def api():
        return {"ok": True}

    app.register_blueprint(probe)
    return app


def probe_rows() -> int:
    db.session.expire_all()
    return len(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "probe.recorded")
    ).all())


# -- every route needs a signed-in user ------------------------------------------------------


def guarded_requests(app):
    """(method, url) for every route and method a browser session guards."""
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.rpartition(".")[0]
        if rule.endpoint in PUBLIC_ENDPOINTS or blueprint in SELF_AUTHENTICATING_BLUEPRINTS:
            continue
        url = adapter.build(rule.endpoint, {name: 1 for name in rule.arguments})
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, url


def test_every_route_but_the_public_ones_needs_a_signed_in_user(app, client):
    checked = list(guarded_requests(app))
    assert ("GET", "/") in checked and ("POST", "/logout") in checked
    assert ("GET", "/probe") in checked and ("GET", "/api/probe") in checked

    for method, url in checked:
        response = client.open(url, method=method)
        if url.startswith("/api/"):
            assert response.status_code == 401, (method, url)
            assert response.get_json() == {"error": "unauthorized"}
        else:
            assert response.status_code == 302, (method, url)
            expected = f"/login?next={url}" if method == "GET" else "/login"
            assert response.headers["Location"] == expected, (method, url)


def test_unknown_paths_do_not_tell_an_anonymous_visitor_what_exists(client, viewer_client):
    assert client.get("/no/such/page").headers["Location"] == "/login?next=/no/such/page"
    assert viewer_client.get("/no/such/page").status_code == 404


def test_the_public_endpoints_need_no_session(client):
    assert client.get("/login").status_code == 200
    assert client.get("/healthz").get_json()["status"] == "ok"
    static = client.get("/static/css/app.css")
    static.close()
    assert static.status_code == 200
    # OAuth callbacks are reachable (and answer for themselves): no redirect to /login
    assert client.get("/login/sso/nobody/callback").status_code == 404
    assert client.get("/connect/nobody/callback").status_code == 404


def test_anything_under_api_answers_401_json_without_credentials(client):
    paths = ("/api", "/api/probe", "/api/v2/anything", "/api/v1/connections",
             "/api/v1/connections/1/access-token")
    for path in paths:
        response = client.get(path, headers={"Authorization": "Bearer not-a-service-key-123"})
        assert response.status_code == 401, path
        assert response.get_json()["error"] == "unauthorized", path
        assert response.mimetype == "application/json", path


def test_a_browser_session_is_no_key_to_the_service_api(viewer_client):
    assert viewer_client.get("/api/v1/connections").status_code == 401
    assert viewer_client.get("/api/probe").get_json() == {"ok": True}  # any other /api/ route


def test_the_service_api_never_opens_the_staff_session(app, viewer_client):
    cookie = viewer_client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    headers = {"Cookie": f"{cookie.key}={cookie.value}"}
    interface = app.session_interface
    with app.test_request_context("/connections", headers=headers) as page:
        assert "_user_id" in interface.open_session(app, page.request)
    for path in ("/api/v1/connections", "/api/v1/connections/1/access-token"):
        with app.test_request_context(path, headers=headers) as call:
            assert interface.is_null_session(interface.open_session(app, call.request)), path
    assert app.url_map.bind("localhost").match("/api/v1/connections")[0].startswith("api.")


def test_api_errors_are_json_for_signed_in_users_too(viewer_client):
    response = viewer_client.get("/api/v2/nothing-here")
    assert response.status_code == 404 and response.get_json() == {"error": "not_found"}


# -- roles -----------------------------------------------------------------------------------


def test_a_viewer_gets_403_from_an_admin_action_and_nothing_happens(viewer_client):
    response = post_form(viewer_client, "/probe/record")

    assert response.status_code == 403
    assert "Only an administrator may do this." in response.get_data(as_text=True)
    assert probe_rows() == 0


def test_an_admin_may_run_an_admin_action_and_is_its_audited_actor(admin_client, admin_user):
    assert post_form(admin_client, "/probe/record").status_code == 201

    assert probe_rows() == 1
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "probe.recorded")
    ).one()
    assert (event.actor, event.actor_user_id) == ("admin@example.com", admin_user.id)


# -- CSRF and cross-site requests ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/login", "/logout", "/account/password", "/probe/record"])
def test_every_post_needs_a_csrf_token(admin_client, path):
    response = admin_client.post(path, data={"email": "admin@example.com",
                                             "password": DEFAULT_PASSWORD})

    assert response.status_code == 400
    assert "This form has expired or did not come from this site." in response.get_data(
        as_text=True
    )
    assert probe_rows() == 0


def test_a_token_from_another_session_is_refused(app, client, viewer_user):
    other = app.test_client()
    response = client.post("/login", data={"email": viewer_user.email,
                                           "password": DEFAULT_PASSWORD,
                                           "csrf_token": csrf_token(other)})
    assert response.status_code == 400


def test_a_cross_site_request_that_changes_something_is_refused(client, admin_client, viewer_user):
    token = csrf_token(client)
    response = client.post(
        "/login",
        data={"email": viewer_user.email, "password": DEFAULT_PASSWORD, "csrf_token": token},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403
    assert client.get("/").status_code == 302  # not signed in

    response = post_form(admin_client, "/probe/record", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403 and probe_rows() == 0

    for same in ("same-origin", "same-site", "none"):
        response = post_form(admin_client, "/probe/record", headers={"Sec-Fetch-Site": same})
        assert response.status_code == 201


def test_a_cross_site_link_still_opens_a_page(viewer_client):
    assert viewer_client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


# -- headers ---------------------------------------------------------------------------------


def responses_of_every_kind(client, viewer_client):
    yield "sign-in page", client.get("/login")
    yield "redirect to sign-in", client.get("/")
    yield "api 401", client.get("/api/probe")
    yield "liveness", client.get("/healthz")
    yield "csrf failure", client.post("/login")
    yield "cross-site", client.post("/login", headers={"Sec-Fetch-Site": "cross-site"})
    yield "method not allowed", viewer_client.get("/logout")
    yield "start page", viewer_client.get("/")
    yield "not found", viewer_client.get("/nothing-here")
    yield "forbidden", post_form(viewer_client, "/probe/record")
    yield "api", viewer_client.get("/api/probe")
    yield "change password", viewer_client.get("/account/password")


def test_security_headers_on_every_response(client, viewer_client):
    for kind, response in responses_of_every_kind(client, viewer_client):
        headers = response.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, kind
        assert headers["X-Content-Type-Options"] == "nosniff", kind
        assert headers["Referrer-Policy"] == "no-referrer", kind
        assert headers["Cache-Control"] == "no-store", kind
        assert "Strict-Transport-Security" not in headers, kind  # plain http


def test_pages_have_no_inline_script_or_style(client, viewer_client):
    for kind, response in responses_of_every_kind(client, viewer_client):
        if response.mimetype != "text/html":
            continue
        page = response.get_data(as_text=True)
        assert not re.search(r"<script|<style|\sstyle=|\son[a-z]+=|javascript:", page), kind


def test_static_files_are_cacheable_and_still_carry_the_other_headers(client):
    response = client.get("/static/css/app.css")
    response.close()

    assert "no-store" not in response.headers.get("Cache-Control", "")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_hsts_only_over_https(client):
    assert "Strict-Transport-Security" not in client.get("/login").headers
    response = client.get("/login", base_url="https://localhost")
    assert response.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"


@pytest.fixture
def app_config(app_config, request):
    app_config.update(getattr(request, "param", {}))
    return app_config


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}


def failed_sign_in_address(client) -> str:
    client.post("/login", data={"email": "x@example.com", "password": "Wrong-Password-12",
                                "csrf_token": csrf_token(client)}, headers=FORWARDED)
    db.session.expire_all()
    return db.session.scalars(select(AuditEvent.client_address)).one()


def test_forwarded_headers_are_ignored_without_trusted_proxies(client):
    assert "Strict-Transport-Security" not in client.get("/login", headers=FORWARDED).headers
    assert failed_sign_in_address(client) == "127.0.0.1"


@pytest.mark.parametrize("app_config", [{"VAULT_TRUSTED_PROXIES": 1}], indirect=True)
def test_a_trusted_proxy_tells_the_scheme_and_the_client_address(client):
    assert "Strict-Transport-Security" in client.get("/login", headers=FORWARDED).headers
    assert failed_sign_in_address(client) == "203.0.113.7"


# -- cookies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["http://localhost", "https://vault.example"])
def test_the_session_cookie_is_host_only_secure_httponly_and_samesite_lax(
    client, viewer_user, base_url
):
    token = csrf_token(client, base_url=base_url)
    response = client.post(
        "/login",
        base_url=base_url,
        data={"email": viewer_user.email, "password": DEFAULT_PASSWORD, "csrf_token": token},
    )

    assert response.status_code == 302
    # The other cookie is the device cookie (tests/test_throttle.py checks its attributes).
    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if "device=" not in c]
    name, _, rest = cookie.partition("=")
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in rest.split(";")[1:]}
    assert name == "__Host-session"
    assert {"secure", "httponly", "path", "samesite"} <= attributes.keys()
    assert attributes["path"] == "Path=/" and attributes["samesite"] == "SameSite=Lax"
    assert "domain" not in attributes and "expires" not in attributes  # ends with the browser
    assert "remember" not in cookie.lower()


def test_signing_in_over_https_works_end_to_end(client, viewer_user):
    token = csrf_token(client, base_url="https://localhost")
    response = client.post(
        "/login", base_url="https://localhost",
        data={"email": viewer_user.email, "password": DEFAULT_PASSWORD, "csrf_token": token},
    )  # no Referer, as with Referrer-Policy: no-referrer, and still accepted

    assert response.status_code == 302
    assert client.get("/", base_url="https://localhost").status_code == 200


def test_the_signed_in_flask_session_is_only_ids_and_clocks(viewer_client):
    with viewer_client.session_transaction() as session:
        keys = set(session)
    assert keys <= {"_user_id", "_fresh", "_id", "csrf_token", "signed_in_at", "last_seen_at",
                    "credential_marker", "_flashes"}
