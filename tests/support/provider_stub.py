"""A provider's token endpoint on loopback, for refresh tests and benchmarks.

Real HTTP (werkzeug, one thread per request). Like real providers it rotates the refresh
token on every use and answers ``400 invalid_grant`` to one that was rotated away, so a
double refresh shows up as a failure, not just as a count. It counts requests, can answer
slowly, and can be told to fail the next requests in a given way (5xx, 429 + Retry-After, a
refused grant). Also: the client-credentials grant, the GreenInvoice key exchange
(``/greeninvoice/token``) and a discovery document.

    with ProviderStub() as stub:
        refresh_token = stub.issue_refresh_token()
        ... stub.token_url ... stub.count() ...
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.browser.fixtures import LiveServer

CLIENT_ID = "vault-client"
CLIENT_SECRET = "stub-client-secret-0123456789"


@dataclass
class Failure:
    """One scripted bad answer."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ProviderStub:
    """A token endpoint that rotates refresh tokens; see the module docstring."""

    def __init__(
        self,
        *,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        delay: float = 0.0,
        expires_in: int | None = 3600,
        refresh_token_expires_in: int | None = None,
        rotate: bool = True,
        strict: bool = True,
    ):
        self.client_id, self.client_secret = client_id, client_secret
        self.delay, self.expires_in, self.rotate = delay, expires_in, rotate
        # strict=False accepts any refresh token once (benchmarks seed thousands of them).
        self.strict = strict
        self.used_refresh_tokens: set[str] = set()
        self.refresh_token_expires_in = refresh_token_expires_in
        self.valid_refresh_tokens: set[str] = set()
        self.api_keys: dict[str, str] = {}
        self.issued_access_tokens: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.failures: deque[Failure] = deque()
        self._lock = threading.Lock()
        self._server = LiveServer(self._app)
        self.base_url = self._server.url

    def __enter__(self) -> ProviderStub:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    # -- for tests ---------------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def greeninvoice_url(self) -> str:
        return f"{self.base_url}/greeninvoice/token"

    @property
    def discovery_url(self) -> str:
        return f"{self.base_url}/.well-known/openid-configuration"

    def issue_refresh_token(self) -> str:
        """A refresh token the stub will accept (once, when it rotates)."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.valid_refresh_tokens.add(token)
        return token

    def issue_api_key(self) -> tuple[str, str]:
        """A GreenInvoice-style (key id, key secret) pair the exchange accepts."""
        key_id, secret = "gi-id-" + secrets.token_hex(8), "gi-secret-" + secrets.token_urlsafe(24)
        self.api_keys[key_id] = secret
        return key_id, secret

    def fail_next(self, status: int, body=None, headers=None, *, times: int = 1) -> None:
        """Answer the next ``times`` token requests with this failure."""
        for _ in range(times):
            self.failures.append(Failure(status, body, dict(headers or {})))

    def count(self, path: str = "/token") -> int:
        """How many requests reached ``path``."""
        with self._lock:
            return sum(1 for request in self.requests if request["path"] == path)

    def providers_toml(self, key: str = "acme", **extra: str) -> str:
        """A providers-file table for an OAuth 2.0 provider pointing at this stub."""
        return providers_toml(
            key, self.base_url, client_id=self.client_id, client_secret=self.client_secret, **extra
        )

    # -- HTTP --------------------------------------------------------------------------------

    def _app(self, environ, start_response):
        request = Request(environ)
        routes = {
            "/token": self._token,
            "/greeninvoice/token": self._greeninvoice,
            "/.well-known/openid-configuration": self._discovery,
        }
        handler = routes.get(request.path)
        response = handler(request) if handler else Response("not found", status=404)
        return response(environ, start_response)

    def _answer(self, request: Request, respond) -> Response:
        """Record the request, wait ``delay``, then play a scripted failure or ``respond``."""
        with self._lock:
            self.requests.append({"path": request.path, "form": dict(request.form)})
            failure = self.failures.popleft() if self.failures else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            body = failure.body if isinstance(failure.body, str) else json.dumps(failure.body or {})
            kind = "text/html" if isinstance(failure.body, str) else "application/json"
            return Response(body, status=failure.status, content_type=kind, headers=failure.headers)
        with self._lock:
            return respond()

    def _token(self, request: Request) -> Response:
        def respond() -> Response:
            if not self._client_authenticated(request):
                return _json({"error": "invalid_client"}, 401)
            grant_type = request.form.get("grant_type")
            if grant_type == "client_credentials":
                return _json(self._access_answer())
            if grant_type != "refresh_token":
                return _json({"error": "unsupported_grant_type"}, 400)
            used = request.form.get("refresh_token", "")
            if not self.strict and used not in self.used_refresh_tokens:
                self.valid_refresh_tokens.add(used)
            self.used_refresh_tokens.add(used)
            if used not in self.valid_refresh_tokens:
                return _json(
                    {"error": "invalid_grant", "error_description": "Token has been revoked."}, 400
                )
            answer = self._access_answer()
            if self.rotate:
                self.valid_refresh_tokens.discard(used)
                answer["refresh_token"] = "rt-" + secrets.token_urlsafe(24)
                self.valid_refresh_tokens.add(answer["refresh_token"])
            if self.refresh_token_expires_in is not None:
                answer["refresh_token_expires_in"] = self.refresh_token_expires_in
            return _json(answer)

        return self._answer(request, respond)

    def _access_answer(self) -> dict[str, Any]:
        access_token = f"at-{len(self.issued_access_tokens) + 1}-{secrets.token_urlsafe(16)}"
        self.issued_access_tokens.append(access_token)
        answer: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return answer

    def _client_authenticated(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return (user, password) == (self.client_id, self.client_secret)
        form = request.form
        return (form.get("client_id"), form.get("client_secret")) == (
            self.client_id,
            self.client_secret,
        )

    def _greeninvoice(self, request: Request) -> Response:
        def respond() -> Response:
            body = request.get_json(silent=True) or {}
            if self.api_keys.get(body.get("id")) != body.get("secret") or not body.get("secret"):
                return _json({"errorCode": 401, "errorMessage": "Bad credentials"}, 401)
            expires = int(time.time()) + (self.expires_in or 3600)
            token = _fake_jwt({"exp": expires, "sub": body["id"]})
            self.issued_access_tokens.append(token)
            return _json({"token": token, "expires": expires})

        return self._answer(request, respond)

    def _discovery(self, request: Request) -> Response:
        return _json(
            {
                "issuer": self.base_url,
                "authorization_endpoint": f"{self.base_url}/authorize",
                "token_endpoint": self.token_url,
            }
        )


def providers_toml(
    key: str,
    base_url: str,
    *,
    client_id: str = CLIENT_ID,
    client_secret: str = CLIENT_SECRET,
    **extra: str,
) -> str:
    """A providers-file table for an OAuth 2.0 provider served at ``base_url``."""
    lines = [
        f"[{key}]",
        'type = "oauth2"',
        f'client_id = "{client_id}"',
        f'client_secret = "{client_secret}"',
        f'authorize_url = "{base_url}/authorize"',
        f'token_url = "{base_url}/token"',
    ]
    lines += [f'{name} = "{value}"' for name, value in extra.items()]
    return "\n".join(lines) + "\n"


def serve(queue, stop, **options) -> None:
    """Run a stub in a process of its own (benchmarks): put its base URL, wait for ``stop``."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    with ProviderStub(**options) as stub:
        queue.put(stub.base_url)
        stop.wait()


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _fake_jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig-{secrets.token_hex(8)}"
