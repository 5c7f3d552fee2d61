"""A provider's device authorization and token endpoints on loopback (RFC 8628), for tests.

Real HTTP (werkzeug, one thread per request). ``POST /device`` checks the client's basic
credentials and hands out a random device code and user code; ``POST /token`` answers the
device-code grant from a script of outcomes (``authorization_pending``, ``slow_down``,
``access_denied``, ``expired_token``, any other error, ``unavailable`` for a 503, or
``approve``), recording when each poll came, and can
answer slowly; ``GET /userinfo`` says who the approved account is.

    with DeviceStub() as stub:
        stub.script("authorization_pending", "approve")
        ... stub.providers_toml("tv") ... stub.polls() ...
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import deque
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.browser.fixtures import LiveServer

CLIENT_ID = "device-client"
CLIENT_SECRET = "device-client-secret-0123456789"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SUBJECT, EMAIL = "tv-user-1", "tv.user@example.test"


class DeviceStub:
    """See the module docstring."""

    def __init__(self, *, interval: int = 5, expires_in: int = 600, delay: float = 0.0):
        self.interval, self.expires_in, self.delay = interval, expires_in, delay
        self.device_codes: list[str] = []
        self.user_codes: list[str] = []
        self.access_tokens: list[str] = []
        self.refresh_tokens: list[str] = []
        self.poll_times: list[float] = []
        self.requests: list[dict[str, Any]] = []
        self._outcomes: deque[str] = deque()
        self._lock = threading.Lock()
        self._server = LiveServer(self._app)
        self.base_url = self._server.url

    def __enter__(self) -> DeviceStub:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    def script(self, *outcomes: str) -> None:
        """The answers of the next polls, in order; once used up, ``authorization_pending``."""
        with self._lock:
            self._outcomes.extend(outcomes)

    def polls(self) -> int:
        """How many device-code grant requests reached the token endpoint."""
        with self._lock:
            return len(self.poll_times)

    def providers_toml(self, key: str = "tv", **extra: str) -> str:
        """A providers-file table for a plain OAuth 2.0 provider with ``flow = "device"``."""
        lines = [
            f"[{key}]", f'title = "{key.upper()} Console"', 'type = "oauth2"', 'flow = "device"',
            f'client_id = "{CLIENT_ID}"', f'client_secret = "{CLIENT_SECRET}"',
            'scope = "read offline_access"',
            f'device_authorization_url = "{self.base_url}/device"',
            f'token_url = "{self.base_url}/token"',
            f'userinfo_url = "{self.base_url}/userinfo"',
            *(f"{name} = {json.dumps(value)}" for name, value in extra.items()),
        ]
        return "\n".join(lines) + "\n"

    # -- HTTP --------------------------------------------------------------------------------

    def _app(self, environ, start_response):
        request = Request(environ)
        with self._lock:
            self.requests.append({"path": request.path, "form": dict(request.form),
                                  "authorization": request.headers.get("Authorization")})
        routes = {"/device": self._device, "/token": self._token, "/userinfo": self._userinfo}
        handler = routes.get(request.path)
        response = handler(request) if handler else Response("not found", status=404)
        return response(environ, start_response)

    def _authenticated(self, request: Request) -> bool:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    def _device(self, request: Request) -> Response:
        if request.method != "POST" or not self._authenticated(request):
            return _json({"error": "invalid_client"}, 401)
        device_code = "dc-" + secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        with self._lock:
            self.device_codes.append(device_code)
            self.user_codes.append(user_code)
        return _json({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": f"{self.base_url}/activate",
            "verification_uri_complete": f"{self.base_url}/activate?user_code={user_code}",
            "expires_in": self.expires_in,
            "interval": self.interval,
        })

    def _token(self, request: Request) -> Response:
        if not self._authenticated(request):
            return _json({"error": "invalid_client"}, 401)
        if request.form.get("grant_type") != DEVICE_GRANT:
            return _json({"error": "unsupported_grant_type"}, 400)
        with self._lock:
            self.poll_times.append(time.monotonic())
            known = request.form.get("device_code") in self.device_codes
            outcome = self._outcomes.popleft() if self._outcomes else "authorization_pending"
        time.sleep(self.delay)
        if not known:
            return _json({"error": "invalid_grant"}, 400)
        if outcome == "unavailable":
            return _json({"error": "temporarily_unavailable"}, 503)
        if outcome != "approve":
            return _json({"error": outcome}, 400)
        access, refresh = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.access_tokens.append(access)
            self.refresh_tokens.append(refresh)
        return _json({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                      "refresh_token": refresh, "scope": "read offline_access"})

    def _userinfo(self, request: Request) -> Response:
        with self._lock:
            known = request.headers.get("Authorization", "").removeprefix("Bearer ") in \
                self.access_tokens
        if not known:
            return _json({"error": "invalid_token"}, 401)
        return _json({"sub": SUBJECT, "email": EMAIL, "name": "TV User"})


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json",
                    headers={"Cache-Control": "no-store"})
