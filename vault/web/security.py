"""The web security baseline: who may reach what, sessions, headers, cookies and error pages.

``init_security(app)`` installs it all. Every request passes one app-wide check
(:func:`_guard_request`): only the endpoints in :data:`PUBLIC_ENDPOINTS` are reachable without
signing in (the JSON API checks its service keys itself), so a new blueprint is protected
without doing anything. Admin-only views use :func:`admin_required`.

Hostile input never reaches a view (:func:`_refuse_hostile_input`, and
:class:`~vault.web.converters.IdConverter` for ids); the error pages, the database outage's
503 included, are :mod:`vault.web.errors`'.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Callable
from itertools import chain
from typing import TypeVar
from urllib.parse import urlsplit

from flask import (
    Flask,
    Request,
    abort,
    current_app,
    flash,
    g,
    redirect,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_user, logout_user
from werkzeug.exceptions import RequestEntityTooLarge, SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from vault.extensions import db, login_manager
from vault.models import User, utcnow
from vault.oauth.clients import connect_client, staff_client
from vault.services.accounts import session_marker
from vault.web.converters import IdConverter
from vault.web.errors import init_error_pages, is_api_request, json_error

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Reachable without a session. Everything else, including blueprints added later, needs one.
# The connect blueprint's OAuth callback must be its view ``callback``.
PUBLIC_ENDPOINTS = frozenset({
    "static",
    "health.healthz",
    "auth.login",
    "auth.sso_start",
    "auth.sso_callback",
    "connect.callback",
    # Reconnect and connect links: the link's token is the credential (vault/web/reconnect.py).
    "reconnect.landing",
    "reconnect.begin",
    "reconnect.done",
})
# Answered without looking at the session: a liveness probe must not need the users table.
SESSIONLESS_ENDPOINTS = frozenset({"static", "health.healthz"})
# Blueprints that authenticate every request themselves and use no session: the JSON API
# (service keys) and /metrics (its bearer token, or loopback). Any other blueprint,
# including one added later, needs a signed-in user.
SELF_AUTHENTICATING_BLUEPRINTS = frozenset({"api", "metrics"})
# Where that blueprint (vault.web.api) is mounted: its requests never get a staff session.
SERVICE_API_PATH = "/api/v1/"
# All a user who must choose a new password can reach until they have.
PASSWORD_CHANGE_ENDPOINTS = frozenset({"auth.change_password", "auth.logout"})

# form-action: forms post to this site only; the Connect and staff sign-in buttons' posts
# are redirected on to the provider, which browsers also check against form-action, so
# HTML pages add the providers' authorization origins to it (:func:`_provider_origins`).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
STRICT_TRANSPORT_SECURITY = "max-age=63072000; includeSubDomains"
COOKIE_SETTINGS = {
    # The __Host- prefix makes browsers insist on Secure, Path=/ and no Domain, so no other
    # host under the same domain can plant or overwrite the cookie. Browsers accept Secure
    # cookies on http://localhost and http://127.0.0.1, so local development works unchanged.
    "SESSION_COOKIE_NAME": "__Host-session",
    "SESSION_COOKIE_SECURE": True,
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_PATH": "/",
    "SESSION_COOKIE_DOMAIN": None,
    # There is no "remember me"; should a remember cookie ever be set, it is as strict.
    "REMEMBER_COOKIE_NAME": "__Host-remember",
    "REMEMBER_COOKIE_SECURE": True,
    "REMEMBER_COOKIE_HTTPONLY": True,
    "REMEMBER_COOKIE_SAMESITE": "Lax",
    "REMEMBER_COOKIE_PATH": "/",
    # With Referrer-Policy: no-referrer browsers send no Referer, which Flask-WTF's HTTPS
    # referrer check demands; refusing Sec-Fetch-Site: cross-site takes its place.
    "WTF_CSRF_SSL_STRICT": False,
}

# Session keys (the session holds who signed in and when; never a token).
SIGNED_IN_AT = "signed_in_at"
LAST_SEEN_AT = "last_seen_at"
CREDENTIAL_MARKER = "credential_marker"
# The idle clock is moved on at most once a minute, so not every response rewrites the cookie.
SEEN_RESOLUTION_SECONDS = 60

View = TypeVar("View", bound=Callable)

# Refused in the path, query string and form fields (400): C0 controls but tab, line feed and
# carriage return (text areas send them), and DEL. PostgreSQL cannot store NUL; none belongs
# in what a person types, or in logs. Bidi overrides and the like are each field's business
# (e-mail addresses refuse them: vault.services.accounts.checked_email).
# What a provider's host may look like in the Content-Security-Policy (IDNA form).
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def init_security(app: Flask) -> None:
    """Install the security baseline on ``app``.

    Call after the extensions are bound and before any blueprint is registered: routes take
    their ``<int:...>`` converter when they are added.
    """
    app.config.update(COOKIE_SETTINGS)
    app.url_map.converters["int"] = IdConverter
    proxies = app.config["VAULT_TRUSTED_PROXIES"]
    if proxies:
        # Only what every reverse proxy sets itself: the client address and the scheme (for
        # HSTS and Secure cookies). Many proxies pass X-Forwarded-Host/-Prefix from the client.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]  # Flask's documented way
            app.wsgi_app, x_for=proxies, x_proto=proxies
        )
    app.session_interface = StaffSessionInterface()
    login_manager.session_protection = "basic"
    login_manager.user_loader(_load_user)
    # First of all before-request functions, ahead of CSRFProtect and Flask-Limiter: a
    # cross-site or anonymous request is turned away before anything else looks at it.
    app.before_request_funcs.setdefault(None, []).insert(0, _guard_request)
    app.after_request(_set_security_headers)
    init_error_pages(app)


class StaffSessionInterface(SecureCookieSessionInterface):
    """The signed session cookie, for people only.

    Requests to the service-key API get Flask's null session: a staff cookie sent along is
    neither read nor written, so it can never stand in for a service key, and the API's hot
    path skips verifying and re-signing it. (Sessions open before the URL is matched, so
    this goes by the path.)
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith(SERVICE_API_PATH):
            return self.make_null_session(app)
        return super().open_session(app, request)


def admin_required(view: View) -> View:
    """Let only admins through to ``view``; anyone else gets 403 and the view never runs."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        require_admin()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def signed_in_user_key() -> str:
    """Flask-Limiter key for limits counted per signed-in staff user."""
    return f"user:{current_user.id}"


def require_admin() -> None:
    """Abort with 403 unless an admin is signed in (for views and ``before_request``)."""
    if not (current_user.is_authenticated and current_user.is_admin):
        abort(403, "Only an administrator may do this.")


def start_session(user: User) -> None:
    """Sign ``user`` in with a brand-new session: nothing of the previous one survives."""
    session.clear()  # no session fixation: a planted session carries nothing over
    g.pop("csrf_token", None)  # Flask-WTF caches the old session's token for this request
    login_user(user)
    now = _now()
    session[SIGNED_IN_AT] = now
    session[LAST_SEEN_AT] = now
    session[CREDENTIAL_MARKER] = session_marker(user)


def end_session() -> None:
    """Sign out and forget everything the session held."""
    logout_user()
    session.clear()


def safe_next_path(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site, else ``default``: ``next`` never leaves it.

    Refuses absolute and scheme-relative URLs (``//host``, ``/\\host``, which browsers read
    as ``//host``), schemes (``javascript:``, ``https:host``) and control characters, which
    browsers strip before reading the URL.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ch.isspace() or not ch.isprintable() for ch in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def current_path() -> str | None:
    """Where to come back to after signing in: the GET request's path and query, else None."""
    if request.method != "GET":
        return None  # a form post cannot be replayed by a redirect
    return request.full_path.rstrip("?")


def _now() -> int:
    return int(utcnow().timestamp())


def _load_user(user_id: str) -> User | None:
    # Called by Flask-Login once a request: a disabled user, or one whose password changed
    # since this session began, is not signed in any more.
    try:
        user = db.session.get(User, int(user_id))
    except ValueError:
        return None
    if user is None or not user.enabled:
        return None
    if not hmac.compare_digest(str(session.get(CREDENTIAL_MARKER, "")), session_marker(user)):
        return None
    return user


def _guard_request() -> ResponseReturnValue | None:
    _refuse_hostile_input()
    if request.method not in SAFE_METHODS and request.headers.get("Sec-Fetch-Site") == "cross-site":
        abort(403, "Requests from other sites may not change anything here.")
    if (
        request.endpoint in SESSIONLESS_ENDPOINTS
        or request.blueprint in SELF_AUTHENTICATING_BLUEPRINTS
    ):
        return None
    _end_stale_session()
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not current_user.is_authenticated:
        if is_api_request():
            return json_error("unauthorized", 401)
        return redirect(url_for("auth.login", next=current_path()))
    if current_user.must_change_password and request.endpoint not in PASSWORD_CHANGE_ENDPOINTS:
        if is_api_request():
            return json_error("password_change_required", 403)
        return redirect(url_for("auth.change_password", next=current_path()))
    return None


def _refuse_hostile_input() -> None:
    # Before anything reads the body or looks a value up: an oversized body unread (413),
    # control characters anywhere a value comes from (400), a Host outside TRUSTED_HOSTS.
    if isinstance(request.routing_exception, SecurityError):
        raise request.routing_exception  # no URL can be built for this request: plain 400
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestEntityTooLarge(f"Requests may carry at most {limit // 1024} KiB.")
    if request.blueprint in SELF_AUTHENTICATING_BLUEPRINTS:
        return  # the token API checks its few parameters itself, answering its own errors
    fields = [*request.args.items(multi=True), *request.form.items(multi=True)]
    if any(FORBIDDEN_CHARACTERS.search(text) for text in (request.path, *chain(*fields))):
        abort(400, "The address or the form holds control characters; nothing was done.")


def _end_stale_session() -> None:
    if "_user_id" not in session:
        return
    now = _now()
    idle_limit = current_app.config["VAULT_SESSION_IDLE_MINUTES"] * 60
    age_limit = current_app.config["VAULT_SESSION_MAX_HOURS"] * 3600
    expired = (
        now - session.get(LAST_SEEN_AT, 0) > idle_limit
        or now - session.get(SIGNED_IN_AT, 0) > age_limit
    )
    if expired or not current_user.is_authenticated:
        end_session()
        if not is_api_request():
            flash("Your session has expired. Please sign in again." if expired
                  else "Please sign in again.", "info")
        return
    if now - session[LAST_SEEN_AT] >= SEEN_RESOLUTION_SECONDS:
        session[LAST_SEEN_AT] = now


def _set_security_headers(response: Response) -> Response:
    headers = response.headers
    origins = sorted(_provider_origins()) if response.mimetype == "text/html" else []
    headers["Content-Security-Policy"] = " ".join([CONTENT_SECURITY_POLICY, *origins])
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"  # OAuth codes travel in URLs
    headers["X-Frame-Options"] = "DENY"  # frame-ancestors, for browsers that predate it
    if request.endpoint != "static":
        headers["Cache-Control"] = "no-store"
    if request.is_secure:
        headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY
    return response


def _provider_origins() -> frozenset[str]:
    # Where the Connect and staff sign-in posts redirect to: each browser provider's
    # authorization endpoint, named in the providers file or discovered (once the discovery
    # document has been read); until then the discovery URL's origin, nearly always the same.
    urls: list[str | None] = []
    for provider in current_app.extensions["providers"]:
        if not provider.is_oauth or provider.uses_client_credentials:
            continue
        if provider.authorize_url:
            urls.append(provider.authorize_url)
            continue
        clients = [connect_client(provider)]
        if provider.staff_login:
            clients.append(staff_client(provider))
        urls.append(provider.server_metadata_url)
        urls += [client.server_metadata.get("authorization_endpoint") for client in clients]
    return frozenset(origin for url in urls if url and (origin := _origin(url)) is not None)


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url``, or None when it is not a plain http(s) origin.

    A discovery document is the provider's to write: its URLs go into a header only as a
    host name of letters, digits, dots and hyphens, and a port, so none can add a directive
    (``;``), a source (a space) or credentials to the policy.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not HOST_NAME.fullmatch(host):
        return None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
