"""The error pages: HTML for people, JSON for the API, and the database-outage answer.

Every error a request can meet ends here with the site's own page (or ``{"error": ...}`` on
the API): 400 for hostile input, 403, 404, 405, 413 for oversized bodies, 429 with
``Retry-After``, and 503 with ``Retry-After`` while the database cannot be reached.
"""

from __future__ import annotations

import contextlib
import time

from flask import Flask, current_app, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.wrappers import Response

from vault.extensions import db, limiter, login_manager

# What a database outage raises: the server is down, restarting or failing over, the network
# dropped, no pooled connection came free in time, or a lock was not granted in time.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)
DATABASE_RETRY_AFTER_SECONDS = 5


def init_error_pages(app: Flask) -> None:
    """Register the handlers below on ``app``."""
    app.register_error_handler(CSRFError, _csrf_error)
    for code in (400, 403, 404, 405, 413, 429):
        app.register_error_handler(code, _error_page)
    for error in DATABASE_UNAVAILABLE:
        app.register_error_handler(error, _database_unavailable)


def is_api_request() -> bool:
    """True for the JSON API, which answers errors in JSON instead of HTML pages."""
    return request.path == "/api" or request.path.startswith("/api/")


def json_error(error: str, status: int) -> tuple[Response, int]:
    return jsonify(error=error), status


def _error_page(error: HTTPException) -> tuple[Response | str, int]:
    status = error.code or 500
    if is_api_request():
        return json_error(error.name.lower().replace(" ", "_"), status)
    if isinstance(error, SecurityError):  # a Host outside TRUSTED_HOSTS: no URL can be built
        return Response("Bad Request: unknown host name.", status, mimetype="text/plain"), status
    try:
        page = render_template("errors/error.html", title=error.name, message=error.description)
    except DATABASE_UNAVAILABLE as outage:  # the page asks who is signed in
        return _database_unavailable(outage)
    response = current_app.make_response((page, status))
    if status == 429 and limiter.current_limit is not None:
        seconds = limiter.current_limit.reset_at - int(time.time())
        response.headers["Retry-After"] = str(max(1, seconds))
    return response, status


def _database_unavailable(error: Exception) -> tuple[Response | str, int]:
    # Wherever it struck (a view, or Flask-Login's user loader in a before-request hook): the
    # page is rendered without the database, nobody signed in, so no user is looked up again.
    current_app.logger.warning(  # the driver's words (refused, no such table), not the SQL
        "request failed: database unavailable: %s: %s",
        type(error).__name__, str(getattr(error, "orig", "")).strip(),
    )
    with contextlib.suppress(*DATABASE_UNAVAILABLE):  # the connection is gone: nothing to undo
        db.session.rollback()
    g._login_user = login_manager.anonymous_user()  # what Flask-Login reads current_user from
    message = "Token Vault cannot reach its database right now. Try again in a moment."
    response = (
        json_error("database_unavailable", 503)[0] if is_api_request() else
        current_app.make_response(render_template(
            "errors/error.html", title="Database unavailable", message=message))
    )
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response, 503


def _csrf_error(error: CSRFError) -> tuple[Response | str, int]:
    error.description = (
        "This form has expired or did not come from this site. Go back, reload the page and "
        "try again."
    )
    return _error_page(error)
