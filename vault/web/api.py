"""The token API for the company's integrations, under ``/api/v1``.

See docs/architecture.md, "Token API".

Authenticated by service keys only (``Authorization: Bearer tvk_...``), checked here in the
blueprint's own ``before_request``; no browser session is needed or used, so CSRF does not
apply. Every answer is JSON, every error too, and nothing may be cached.
"""

from __future__ import annotations

import re
from datetime import datetime

from flask import Blueprint, abort, current_app, g, jsonify, request
from sqlalchemy import Select, and_, exists, select
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Response

from vault import audit
from vault.crypto import DecryptionError
from vault.extensions import csrf, db, limiter
from vault.grants.kinds import describe
from vault.models import Connection, ConnectionTag, Token, TokenKind, utcnow
from vault.observability import metrics
from vault.refresh.engine import ProviderUnavailable
from vault.services import accounts, handout, service_keys
from vault.services.ownership import OwnershipError, tags_of
from vault.tokens.store import AccessToken, NeedsReconnect, TokenUnavailable, token_vault
from vault.web.api_spec import openapi_document
from vault.web.errors import DATABASE_RETRY_AFTER_SECONDS, DATABASE_UNAVAILABLE

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # token-authenticated and read-only: there is no session to ride on
limiter.exempt(bp)  # integrations poll; the app-wide limits are for people and forms


@limiter.request_filter
def _is_service_api_request() -> bool:
    # The exemption above, decided before Flask-Limiter resolves any limits: cheaper for
    # every request of the token API's hot path.
    return request.blueprint == bp.name

PROVIDER_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
OPEN_ENDPOINTS = frozenset({"api.openapi"})
QUERY_PARAMETERS = {"api.list_connections": {"provider", "tag", "owner"}, "api.access_token": set()}
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Flask's automatic OPTIONS answer would list the catch-all route's methods in Allow too;
# the catch-all answers OPTIONS instead, with the methods the path really supports.
READ_ONLY = {"provide_automatic_options": False}


@bp.before_request
def authenticate_service_key() -> Response | None:
    """Let through only requests that carry a live service key (the spec is public)."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    bearer = presented.strip() if scheme.lower() == "bearer" else None
    if request.endpoint == "api.access_token" and not request.args:
        # A fresh token in one statement (PostgreSQL, a key this process knows): key check,
        # token row, audit row together, in autocommit. None: the long way below, unchanged.
        try:
            handed = handout.hand_out_at_once(bearer, (request.view_args or {})["connection_id"])
        except DecryptionError:
            handed = None  # the long way answers it as always: 500 undecryptable, logged
        if handed is not None:
            return _handed_out(*handed)
    if not db.session().in_transaction():
        # Every API request only reads, but for single-statement writes (the audit row of a
        # token handed out, the key's last use), which need no transaction around them. In
        # autocommit the long way costs a few statements (key, token, audit row, consumer)
        # and no BEGIN or COMMIT round trips. A refresh leaves this connection for a
        # transaction of its own (_refreshed_token); so does the key's once-a-minute last-use
        # commit, after which the request simply goes on in an ordinary transaction.
        db.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    # A valid key is never slowed down: the throttle is consulted for failures only.
    key = service_keys.authenticate(bearer)
    if key is None:
        return _refused(bearer)
    g.service_key = key
    # A misspelt filter (?provder=...) must not silently widen the answer.
    allowed = QUERY_PARAMETERS.get(request.endpoint or "")
    unknown = sorted(set(request.args) - allowed) if allowed is not None else []
    if unknown:
        return _error(400, "unknown_parameter", f"unknown query parameter {unknown[0]!r}")
    return None


def _refused(presented: str | None) -> Response:
    """401 for a missing, unknown or revoked key; 429 once the address has failed too often."""
    # The throttle takes a connection of its own: hand this request's back first, so a flood
    # of bad keys never holds two pooled connections a request.
    db.session.close()
    reservation = service_keys.refuse(presented, request.remote_addr)
    db.session.commit()  # the aggregated audit row, if this refusal wrote one
    if not reservation.granted:
        response = _error(429, "too_many_requests", "too many refused service keys from this "
                          "address; retry later")
        response.headers["Retry-After"] = str(reservation.retry_after)
        return response
    response = _error(401, "unauthorized", "send a valid service key as a Bearer token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="token-vault"'
    return response


@bp.after_request
def never_cache(response: Response) -> Response:
    """Tokens must not stay in any cache on the way."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.get("/openapi.json", **READ_ONLY)
def openapi():
    """The OpenAPI 3 description of this API."""
    return jsonify(openapi_document())


@bp.get("/connections", **READ_ONLY)
def list_connections() -> Response:
    """Connections this key may read, without any secret; ``?provider=``, ``?tag=`` and
    ``?owner=`` narrow them (all must match)."""
    key: service_keys.AuthenticatedKey = g.service_key
    conditions = [key.may_read()]
    provider = request.args.get("provider")
    if provider is not None:
        if not PROVIDER_KEY.match(provider):
            return _error(400, "invalid_provider", "provider must be a provider key")
        if not key.allows(provider):
            return _error(403, "forbidden", "this key may not read that provider's connections")
        conditions.append(Connection.provider == provider)
    if "tag" in request.args:
        # Not an error for a tag-restricted key either: the filter only narrows what the key
        # may read, so a tag outside the key's tags lists the connections carrying both.
        values = request.args.getlist("tag")
        try:
            tags = tags_of(values)
        except OwnershipError:
            tags = []
        if len(values) != 1 or len(tags) != 1:
            return _error(400, "invalid_tag", "tag must be one tag: 1 to 32 lower-case letters, "
                          "digits, '-' or '_'")
        conditions.append(exists().where(
            ConnectionTag.connection_id == Connection.id, ConnectionTag.tag == tags[0]
        ))
    owner = request.args.get("owner")
    if owner is not None:
        try:
            owner = accounts.checked_email(owner)
        except accounts.AccountError:
            return _error(400, "invalid_owner", "owner must be an e-mail address")
        conditions.append(Connection.owner_email == owner)
    access = Token.__table__.alias("access")
    statement = (
        select(Connection, access.c.expires_at)
        .outerjoin(
            access,
            and_(access.c.connection_id == Connection.id, access.c.kind == TokenKind.ACCESS.value),
        )
        .where(*conditions)
        .order_by(Connection.id)
    )
    rows = db.session.execute(statement).all()
    tagged = _tags_of(select(Connection.id).where(*conditions)) if rows else {}
    return jsonify(connections=[
        _connection_json(c, expires_at, tagged.get(c.id, [])) for c, expires_at in rows
    ])


def _tags_of(connection_ids: Select) -> dict[int, list[str]]:
    # One query for the tags of every listed connection, sorted, never one per connection.
    found: dict[int, list[str]] = {}
    for connection_id, tag in db.session.execute(
        select(ConnectionTag.connection_id, ConnectionTag.tag)
        .where(ConnectionTag.connection_id.in_(connection_ids))
        .order_by(ConnectionTag.connection_id, ConnectionTag.tag)
    ):
        found.setdefault(connection_id, []).append(tag)
    return found


@bp.get("/connections/<int:connection_id>/access-token", **READ_ONLY)
def access_token(connection_id: int):
    """A usable access token, refreshed first when it expires within the refresh buffer."""
    key: service_keys.AuthenticatedKey = g.service_key
    row = token_vault.read_access_token_row(connection_id)  # ids in range: IdConverter
    # A connection of a provider this key may not read is answered exactly like a missing
    # one: the key learns nothing about what else the vault holds.
    if row is None or not key.allows(row.provider) or not _tags_allow(key, connection_id):
        return _error(404, "not_found", "no such connection")
    if current_app.extensions["providers"].get(row.provider) is None:
        # Removed from the providers file: nobody can reconnect or refresh it here any more,
        # and its tokens are no longer the vault's to hand out.
        return _error(409, "provider_not_configured", f"provider {row.provider!r} is no longer "
                      "in the providers file; its connections are not handed out")
    try:
        token = token_vault.ready_access_token(row) or _refreshed_token(connection_id)
    except NeedsReconnect as error:
        return _error(409, "needs_reconnect", str(error) or "the account must be connected again")
    except ProviderUnavailable as error:
        response = _error(503, "provider_unavailable", str(error))
        if error.retry_at is not None:
            seconds = max(1, int((error.retry_at - utcnow()).total_seconds()))
            response.headers["Retry-After"] = str(seconds)
        return response
    except TokenUnavailable as error:
        return _error(503, "token_unavailable", str(error))
    except DecryptionError:
        current_app.logger.error("connection %s: stored token cannot be decrypted", connection_id)
        return _error(500, "undecryptable", "the stored token cannot be decrypted")
    # Committed (by itself, or with the refresh path's transaction) before the token
    # leaves: no hand-out goes unaudited.
    audit.handed_out(target=row.provider, connection_id=connection_id, actor=key.actor)
    service_keys.record_consumer(key.id, connection_id)
    db.session.commit()
    return _handed_out(key, token)


def _handed_out(key: service_keys.AuthenticatedKey, token: AccessToken) -> Response:
    """The answer to a token handed out (and already audited), by either way."""
    metrics.count_handout(key.name)  # in this process's memory: no database statement
    return jsonify(
        access_token=token.value, token_type=token.token_type, expires_at=_iso(token.expires_at)
    )


def _tags_allow(key: service_keys.AuthenticatedKey, connection_id: int) -> bool:
    # Only a tag-restricted key pays for this second lookup.
    if not key.allowed_tags:
        return True
    readable = select(Connection.id).where(Connection.id == connection_id, key.may_read())
    return db.session.scalar(readable) is not None


def _refreshed_token(connection_id: int) -> AccessToken:
    """The long way, through ``get_access_token``: refresh first, or say why there is none."""
    # The refresh protocol locks the connection's row and stores tokens atomically: it needs
    # a transaction, not the autocommit connection this request began on.
    db.session.commit()
    connection = db.session.get(Connection, connection_id)
    if connection is None:  # deleted a moment ago
        abort(404, "no such connection")
    return token_vault.get_access_token(connection)


@bp.route("/<path:path>", methods=ANY_METHOD, **READ_ONLY)
def unknown(path: str):
    """Anything else under /api/v1: 405 for a known path, else 404, in JSON."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    try:
        rule, _ = adapter.match(method="GET", return_rule=True)
    except HTTPException:
        rule = None
    if rule is not None and rule.endpoint != request.endpoint:
        response = _error(405, "method_not_allowed", "this API is read-only")
        response.headers["Allow"] = ", ".join(sorted(rule.methods or ()))
        return response
    return _error(404, "not_found", "no such endpoint")


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):
    """Errors raised inside the API answer JSON, never an HTML page."""
    response = _error(error.code or 500, _slug(error.name), error.description or "")
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def database_unavailable(error: Exception):
    """The database cannot be reached (a restart, a failover): 503, and the client retries."""
    db.session.rollback()
    current_app.logger.warning(
        "API request failed: database unavailable (%s)", type(error).__name__
    )
    response = _error(503, "database_unavailable", "the database cannot be reached; retry shortly")
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


# The outages the web pages answer with 503 (vault.web.errors), answered here in JSON.
for _outage in DATABASE_UNAVAILABLE:
    bp.register_error_handler(_outage, database_unavailable)


@bp.errorhandler(Exception)
def unexpected_error(error: Exception):
    """A bug or an outage: logged (scrubbed), answered with a JSON 500."""
    db.session.rollback()
    current_app.logger.exception("API request failed")
    return _error(500, "internal_error", "the request could not be completed")


def _error(status: int, error: str, message: str) -> Response:
    metrics.count_api_error(error)  # every error answer of the API comes through here
    response = jsonify(error=error, message=message)
    response.status_code = status
    return response


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")


def _connection_json(
    connection: Connection, expires_at: datetime | None, tags: list[str]
) -> dict:
    return {
        "id": connection.id,
        "provider": connection.provider,
        "account_subject": connection.account_subject,
        "account_email": connection.account_email,
        "account_name": connection.account_name,
        "status": connection.status,
        "scopes": connection.scopes_granted.split(),
        "expires_at": _iso(expires_at),
        "last_refreshed_at": _iso(connection.last_refreshed_at),
        "last_error": connection.last_error,
        "reconnect_by": _iso(connection.reconnect_by),
        "reconnect_reason": connection.reconnect_reason,
        **_credential_json(connection),
        "owner": connection.owner_email,
        "purpose": connection.purpose,
        "tags": tags,
    }


def _credential_json(connection: Connection) -> dict:
    """``credential_kind`` and, for a key-based credential, ``credential_key`` (id, age)."""
    provider = current_app.extensions["providers"].get(connection.provider)
    if "vault_key_rows" not in g:
        # One query for the request: when each service account's key file was stored.
        rows = db.session.execute(
            select(Token.connection_id, Token.created_at)
            .where(Token.kind == TokenKind.PRIVATE_KEY.value)
        )
        g.vault_key_rows = {connection_id: added for connection_id, added in rows}
    credential = describe(provider, connection.credential_key_id,
                          g.vault_key_rows.get(connection.id))
    key = None
    if credential.key_id is not None:
        key = {"id": credential.key_id, "added_at": _iso(credential.key_added_at),
               "age_days": credential.key_age_days(utcnow())}
    return {"credential_kind": credential.kind.value, "credential_key": key}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None
