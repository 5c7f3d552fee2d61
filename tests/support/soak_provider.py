"""A provider stand-in for the soak test (``make soak``, tests/soak.py).

Real HTTP on loopback (werkzeug, a thread per request), like a real provider under load: every
token request waits ``delay`` (100 ms), ``failure_rate`` of them (1%) answer 503, access
tokens live ``expires_in`` seconds (60), and each grant's refresh token rotates on every use
with reuse detection: a refresh token presented a second time revokes the whole grant, as
OAuth 2.0 Security BCP (RFC 9700, 4.14.2) asks of providers. :meth:`problem` tells whether an
access token handed out by the vault at a given moment is one this provider issued and still
honoured then.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from dataclasses import dataclass

from werkzeug.wrappers import Request, Response

from tests.browser.fixtures import LiveServer
from tests.support.provider_stub import CLIENT_ID, CLIENT_SECRET, providers_toml


@dataclass
class Grant:
    """One connection's grant: its current refresh token, and when reuse revoked it."""

    refresh_token: str
    revoked_at: float | None = None


@dataclass(frozen=True)
class Issued:
    """An access token as issued: its grant and validity."""

    grant: str
    issued_at: float
    expires_at: float


class SoakProvider:
    """The token endpoint; see the module docstring. Counters are read under :attr:`lock`."""

    def __init__(self, *, delay: float = 0.1, failure_rate: float = 0.01, expires_in: int = 60,
                 seed: int | None = None):
        self.delay, self.failure_rate, self.expires_in = delay, failure_rate, expires_in
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.grants: dict[str, Grant] = {}
        self.refresh_owner: dict[str, str] = {}  # every refresh token ever issued -> its grant
        self.access: dict[str, Issued] = {}
        self.refreshed = self.unavailable = self.reused = self.refused = 0
        self._server = LiveServer(self._app)
        self.base_url = self._server.url

    def __enter__(self) -> SoakProvider:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    def providers_toml(self, key: str) -> str:
        """A providers-file table pointing at this stand-in."""
        return providers_toml(key, self.base_url)

    def new_grant(self, expires_in: float | None = None) -> tuple[str, str, float]:
        """A consented grant: (access token, refresh token, the access token's expiry, epoch)."""
        grant = "g-" + secrets.token_hex(8)
        refresh_token = self._refresh_token(grant)
        with self.lock:
            self.grants[grant] = Grant(refresh_token)
            access, expires_at = self._access_token(grant, expires_in)
        return access, refresh_token, expires_at

    def problem(self, access_token: str, at: float) -> str | None:
        """None when ``access_token`` was issued here and honoured at ``at`` (epoch), else why
        not (never the token itself)."""
        with self.lock:
            issued = self.access.get(access_token)
            if issued is None:
                return "never issued"
            revoked_at = self.grants[issued.grant].revoked_at
        if revoked_at is not None and revoked_at <= at:
            return "its grant was revoked (refresh token reuse)"
        if at >= issued.expires_at:
            return f"expired {at - issued.expires_at:.1f} s before it was handed out"
        return None

    # -- HTTP --------------------------------------------------------------------------------

    def _app(self, environ, start_response):
        request = Request(environ)
        if request.path != "/token" or request.method != "POST":
            return Response("not found", status=404)(environ, start_response)
        return self._token(request)(environ, start_response)

    def _token(self, request: Request) -> Response:
        time.sleep(self.delay)
        form = request.form
        if not _client_authenticated(request):
            return _json({"error": "invalid_client"}, 401)
        if form.get("grant_type") != "refresh_token":
            return _json({"error": "unsupported_grant_type"}, 400)
        with self.lock:
            if self.random.random() < self.failure_rate:
                self.unavailable += 1
                return _json({"error": "temporarily_unavailable"}, 503)
            presented = form.get("refresh_token", "")
            grant_id = self.refresh_owner.get(presented)
            grant = self.grants.get(grant_id) if grant_id else None
            if grant is None or grant.revoked_at is not None:
                self.refused += 1
                return _json({"error": "invalid_grant", "error_description": "revoked"}, 400)
            if presented != grant.refresh_token:
                # Presented a second time: someone holds a copy. Revoke the whole grant.
                grant.revoked_at = time.time()
                self.reused += 1
                return _json({"error": "invalid_grant",
                              "error_description": "refresh token reused; grant revoked"}, 400)
            grant.refresh_token = self._refresh_token(grant_id)
            access, _ = self._access_token(grant_id, self.expires_in)
            self.refreshed += 1
            return _json({"access_token": access, "token_type": "Bearer",
                          "expires_in": self.expires_in, "refresh_token": grant.refresh_token})

    def _refresh_token(self, grant: str) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        self.refresh_owner[token] = grant
        return token

    def _access_token(self, grant: str, expires_in: float | None) -> tuple[str, float]:
        now = time.time()
        token = "at-" + secrets.token_urlsafe(24)
        expires_at = now + (self.expires_in if expires_in is None else expires_in)
        self.access[token] = Issued(grant, now, expires_at)
        return token, expires_at


def _client_authenticated(request: Request) -> bool:
    authorization = request.authorization
    if authorization is not None and authorization.type == "basic":
        return (authorization.username, authorization.password) == (CLIENT_ID, CLIENT_SECRET)
    return (request.form.get("client_id"), request.form.get("client_secret")) == (
        CLIENT_ID, CLIENT_SECRET)


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
