"""A real HTTP receiver on loopback for webhook alerts (Standard Webhooks, Slack).

    with WebhookReceiver() as receiver:
        ... VAULT_ALERT_WEBHOOK_URL=receiver.url ...
        receiver.requests  # Received(path, headers, body), in arrival order

``receiver.status = 503`` answers every request so (a channel that is down) until set back
to 200; refused requests are counted in ``receiver.refused``, not kept.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """See the module docstring."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.refused = 0
        self.status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    status = receiver.status
                    if status < 300:
                        receiver.requests.append(
                            Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                     body)
                        )
                    else:
                        receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
