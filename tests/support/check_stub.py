"""A provider's read-only endpoints on loopback, for credential-check tests.

Real HTTP (werkzeug, one thread per request). Answers 200 with an identity at every path
(``/me``, ``/userinfo``, ``/check``, ``/hub/cdr/``; ``/debug_token`` with the token's
expiry), unless told otherwise: ``answer_next(status, body, headers)`` scripts the next
answer, ``delay`` makes every answer slow. It records each request's path, headers and query
so tests can see how the key was sent.

    with CheckStub() as stub:
        stub.answer_next(401, {"error": {"message": "Invalid OAuth access token."}})
        ... stub.url("/me") ... stub.requests ...
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.browser.fixtures import LiveServer


class CheckStub:
    """See the module docstring."""

    def __init__(self, *, delay: float = 0.0, token_expires_at: int = 0):
        self.delay = delay
        self.token_expires_at = token_expires_at  # debug_token's expires_at (0: never)
        self.requests: list[dict[str, Any]] = []
        self._answers: deque[tuple[int, Any, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self._server = LiveServer(self._app)
        self.base_url = self._server.url

    def __enter__(self) -> CheckStub:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    def url(self, path: str) -> str:
        """The stub's URL for ``path``."""
        return self.base_url + path

    def answer_next(self, status: int, body: Any = None, headers: dict | None = None) -> None:
        """Answer the next request with ``status`` (and a JSON ``body``)."""
        self._answers.append((status, body, dict(headers or {})))

    def paths(self) -> list[str]:
        """The paths requested so far, in order."""
        with self._lock:
            return [request["path"] for request in self.requests]

    def _app(self, environ, start_response):
        request = Request(environ)
        with self._lock:
            self.requests.append({"path": request.path, "headers": dict(request.headers),
                                  "args": dict(request.args)})
        if self.delay:
            time.sleep(self.delay)
        if self._answers:
            status, body, headers = self._answers.popleft()
        elif request.path == "/debug_token":
            status, headers = 200, {}
            body = {"data": {"is_valid": True, "expires_at": self.token_expires_at}}
        else:
            status, body, headers = 200, {"id": "1234", "name": "Support line"}, {}
        response = Response(json.dumps(body) if body is not None else "", status=status,
                            content_type="application/json", headers=headers)
        return response(environ, start_response)
