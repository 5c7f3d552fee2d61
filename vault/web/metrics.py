"""``/metrics``: the Prometheus text format, for a scraper holding the metrics token.

Who may read it (docs/architecture.md, "Observability"):

* ``VAULT_METRICS_TOKEN`` set: a request with ``Authorization: Bearer <token>`` (compared in
  constant time), from anywhere; anything else gets 401, loopback included.
* no token: only a direct request from loopback (127.0.0.0/8, ::1) that no proxy forwarded
  (no ``Forwarded``/``X-Forwarded-For``/``X-Real-IP`` header: a reverse proxy on the same
  host would otherwise make every visitor look local). Anyone else gets the site's 404, as
  for a path that does not exist: without a token the endpoint is not published off-host.

The blueprint authenticates its requests itself (vault.web.security's
``SELF_AUTHENTICATING_BLUEPRINTS``): no staff session is needed.
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, abort, current_app, request
from werkzeug.wrappers import Response

from vault.extensions import csrf, db, limiter
from vault.observability.metrics import Metrics

bp = Blueprint("metrics", __name__)
csrf.exempt(bp)  # read-only, and no session to ride on
limiter.exempt(bp)  # scraped every few seconds; the app-wide limits are for people and forms

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


@bp.get("/metrics")
def metrics() -> Response:
    """Every metric in the Prometheus text format, to a reader who may see them."""
    token = current_app.config["VAULT_METRICS_TOKEN"]
    if token is not None:
        if not _bearer_matches(token):
            return _unauthorized()
    elif not _direct_from_loopback():
        abort(404)
    registry: Metrics = current_app.extensions["metrics"]
    response = Response(registry.exposition(db.session()), mimetype=None,
                        content_type=CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response


def _bearer_matches(token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def _direct_from_loopback() -> bool:
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:  # a unix socket or an address that is not an IP
        return False


def _unauthorized() -> Response:
    response = Response("send the metrics token as a Bearer token\n", 401,
                        content_type="text/plain; charset=utf-8")
    response.headers["WWW-Authenticate"] = 'Bearer realm="token-vault-metrics"'
    return response
