"""A request id for every request: kept from a valid ``X-Request-ID``, otherwise made here.

The id is worked out the first time anything asks for it (a log line, an audit row, the
response header) and kept in the request's WSGI environ, so it belongs to exactly one request
whatever runs first, including the security checks that may refuse the request.
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, has_request_context, request
from werkzeug.wrappers import Response

REQUEST_ID_HEADER = "X-Request-ID"
# What an incoming id may look like: short, and nothing that could break a log line, a header
# or a CSV cell. Anything else (too long, spaces, quotes, control characters) is replaced.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_ENVIRON_KEY = "vault.request_id"


def current_request_id() -> str | None:
    """This request's id, or None outside a request (commands, background threads)."""
    if not has_request_context():
        return None
    environ = request.environ
    request_id = environ.get(_ENVIRON_KEY)
    if request_id is None:
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        environ[_ENVIRON_KEY] = request_id
    return request_id


def init_request_ids(app: Flask) -> None:
    """Return every request's id in the ``X-Request-ID`` response header (errors too)."""
    app.after_request(_send_request_id)


def _send_request_id(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = current_request_id() or ""
    return response
