"""A controllable OpenID Connect provider on loopback, for the connect-flow tests.

It speaks real HTTP and checks what a strict provider checks (client authentication, exact
redirect URI, PKCE S256, one-time codes), and each test can make it misbehave in one
specific way: an error answer, a non-JSON answer, a forged id_token, a wrong nonce, no
refresh token, fewer scopes, a wrong ``iss``. ``google=True`` shapes its discovery document
and answers like Google's documented ones.

Every code exchange starts a :class:`Grant`. Like providers with refresh-token rotation and
reuse detection (OAuth 2.0 Security BCP 4.14.2), the ``refresh_token`` grant rotates the
refresh token on every use, and a spent one presented again revokes the whole grant: every
later use of any of its tokens (refresh, userinfo) is refused, and the grant counts the reuse.
``behaviour.expires_in`` sets the access tokens' lifetime; ``behaviour.id_token_account_claims``
keeps the rest of the account out of the id_token (then only userinfo tells, OIDC Core 5.4).
The userinfo endpoint wants a live access token: unexpired, of a grant still standing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.wrappers import Request, Response

from tests.browser.fixtures import LiveServer

ACCOUNT = {"sub": "10769150350006150715113082367", "email": "ops@example.com",
           "email_verified": True, "name": "Ops Account"}


GOOGLE_SCOPE_NAMES = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}


@functools.cache
def _signing_keys() -> tuple[RSAKey, RSAKey]:
    """The stub's key and an impostor's with the same kid (RSA generation is slow: once)."""
    return (
        RSAKey.generate_key(2048, parameters={"kid": "stub-1", "alg": "RS256", "use": "sig"}),
        RSAKey.generate_key(2048, parameters={"kid": "stub-1", "alg": "RS256", "use": "sig"}),
    )


@dataclass
class Behaviour:
    """What the stub does differently from a well-behaved provider (defaults: nothing)."""

    token_status: int = 200
    token_body: str | None = None           # replaces the whole token answer
    token_content_type: str = "application/json"
    sign_with_foreign_key: bool = False
    id_token_claims: dict[str, Any] = field(default_factory=dict)  # overrides
    omit_id_token: bool = False
    omit_refresh_token: bool = False
    omit_expires_in: bool = False
    granted_scope: str | None = None        # None: echo the requested scope
    iss_parameter: str | None = None        # None: the real issuer
    iss_supported: bool = True
    revocation_status: int = 200
    account: dict[str, Any] = field(default_factory=lambda: dict(ACCOUNT))
    expires_in: int = 3599                  # lifetime of every access token issued
    # None: the id_token carries the whole account; else only these of its claims
    # (("sub",): who, but no e-mail or name, which only the userinfo endpoint tells).
    id_token_account_claims: tuple[str, ...] | None = None


@dataclass
class Grant:
    """One authorization (a code exchange) and every token issued under it since."""

    number: int
    scope: str
    refresh_tokens: list[str] = field(default_factory=list, repr=False)  # issue order
    access_tokens: dict[str, float] = field(default_factory=dict, repr=False)  # -> expires at
    revoked_access_tokens: set[str] = field(default_factory=set, repr=False)
    revoked: str | None = None              # None, "reuse" or "revocation"
    reuse_count: int = 0                    # spent refresh tokens presented again

    @property
    def current_refresh_token(self) -> str | None:
        """The refresh token the provider would accept next (None once revoked)."""
        if self.revoked is not None or not self.refresh_tokens:
            return None
        return self.refresh_tokens[-1]

    def refresh_token_state(self, token: str) -> str:
        """``current``, ``spent`` (rotated away), or ``revoked`` (the grant is gone)."""
        if self.revoked is not None:
            return "revoked"
        return "current" if token == self.refresh_tokens[-1] else "spent"

    def access_token_live(self, token: str) -> bool:
        return (
            self.revoked is None
            and token not in self.revoked_access_tokens
            and self.access_tokens.get(token, 0.0) > time.time()
        )


class OIDCStub:
    """Start with ``with OIDCStub() as stub:``; ``stub.issuer`` is its base URL."""

    def __init__(self, client_id="vault-client", client_secret="vault-client-secret-value",
                 *, google: bool = False):
        self.client_id, self.client_secret, self.google = client_id, client_secret, google
        self.behaviour = Behaviour(iss_supported=not google)
        self.key, self.foreign_key = _signing_keys()
        self.codes: dict[str, dict[str, Any]] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.revocations: list[dict[str, str]] = []
        self.issued: list[dict[str, Any]] = []  # answers to code exchanges
        self.refreshed: list[dict[str, Any]] = []  # answers to refresh_token grants
        self.grants: list[Grant] = []
        # What each revocation request presented: {"token_type_hint", "found"}, where found
        # is "current", "spent" or "revoked" (a refresh token), "access" or "unknown".
        self.revoked: list[dict[str, str]] = []
        self.userinfo_requests: list[dict[str, Any]] = []  # {"ok": bool}
        self._lock = threading.RLock()
        self._server = LiveServer(self._app)
        self.issuer = self._server.url

    def __enter__(self) -> OIDCStub:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    # -- what tests look at ----------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def metadata(self) -> dict[str, Any]:
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "revocation_endpoint": f"{self.issuer}/revoke",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile", "offline_access"],
        }
        if self.behaviour.iss_supported:
            document["authorization_response_iss_parameter_supported"] = True
        return document

    def grant_types(self) -> list[str | None]:
        """The ``grant_type`` of every token request so far, in order."""
        return [request["grant_type"] for request in self.token_requests]

    @property
    def reuse_count(self) -> int:
        """How many times a spent refresh token was presented again, over every grant."""
        return sum(grant.reuse_count for grant in self.grants)

    def grant_of(self, token: str) -> Grant | None:
        """The grant a refresh or access token was issued under (None: never issued)."""
        with self._lock:
            for grant in self.grants:
                if token in grant.refresh_tokens or token in grant.access_tokens:
                    return grant
        return None

    def refresh_token_state(self, token: str | None) -> str:
        """What the provider thinks of a refresh token: current, spent, revoked or unknown."""
        grant = self.grant_of(token) if token else None
        if grant is None or token not in grant.refresh_tokens:
            return "unknown"
        return grant.refresh_token_state(token)

    def authorize(self, url_params: dict[str, str]) -> str:
        """Act as the user consenting: the URL the provider sends the browser back to."""
        self.authorize_requests.append(url_params)
        code = secrets.token_urlsafe(24)
        self.codes[code] = dict(url_params)
        answer = {"code": code, "state": url_params.get("state", "")}
        # Google sends iss without advertising it in its discovery document.
        if self.behaviour.iss_supported or self.google:
            answer["iss"] = self.behaviour.iss_parameter or self.issuer
        if self.google:
            answer["scope"] = url_params.get("scope", "")
            answer["authuser"] = "0"
            answer["prompt"] = "consent"
        return f"{url_params['redirect_uri']}?{urlencode(answer)}"

    # -- the HTTP side ---------------------------------------------------------------------

    def _app(self, environ, start_response):
        request = Request(environ)
        routes = {
            "/.well-known/openid-configuration": lambda: self._json(self.metadata()),
            # The user consents at once (tests usually call authorize() themselves instead).
            "/authorize": lambda: Response(
                status=302, headers={"Location": self.authorize(request.args.to_dict())}
            ),
            "/jwks": lambda: self._json(KeySet([self.key]).as_dict(private=False)),
            "/token": lambda: self._token(request),
            "/userinfo": lambda: self._userinfo(request),
            "/revoke": lambda: self._revoke(request),
        }
        handler = routes.get(request.path)
        response = handler() if handler else Response("not found", status=404)
        return response(environ, start_response)

    @staticmethod
    def _json(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})

    def _client_authenticated(self, request: Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (user, password) == (self.client_id, self.client_secret):
                return "client_secret_basic"
        if (request.form.get("client_id"), request.form.get("client_secret")) == (
            self.client_id, self.client_secret
        ):
            return "client_secret_post"
        return None

    def _token(self, request: Request) -> Response:
        method = self._client_authenticated(request)
        self.token_requests.append({"form": dict(request.form), "auth_method": method,
                                    "grant_type": request.form.get("grant_type")})
        if method is None:
            return self._json({"error": "invalid_client"}, 401)
        behaviour = self.behaviour
        if behaviour.token_body is not None:
            return Response(behaviour.token_body, status=behaviour.token_status,
                            content_type=behaviour.token_content_type)
        if request.form.get("grant_type") == "refresh_token":
            return self._refresh(request.form.get("refresh_token", ""))
        grant = self.codes.pop(request.form.get("code", ""), None)
        if grant is None:
            return self._json({"error": "invalid_grant", "error_description": "unknown code"}, 400)
        if request.form.get("redirect_uri") != grant["redirect_uri"]:
            return self._json({"error": "invalid_grant", "error_description": "redirect_uri"}, 400)
        verifier = request.form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
        if grant.get("code_challenge_method") != "S256" or challenge.decode() != grant.get("code_challenge"):
            return self._json({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        scope = behaviour.granted_scope if behaviour.granted_scope is not None else grant.get("scope", "")
        if self.google:  # Google names the shorthand OpenID scopes by their long URLs
            scope = " ".join(GOOGLE_SCOPE_NAMES.get(s, s) for s in scope.split())
        with self._lock:
            record = Grant(number=len(self.grants) + 1, scope=scope)
            self.grants.append(record)
            answer = self._new_tokens(record, refresh=not behaviour.omit_refresh_token)
        if "openid" in grant.get("scope", "").split() and not behaviour.omit_id_token:
            answer["id_token"] = self._id_token(grant, answer["access_token"])
        self.issued.append(answer)
        return self._json(answer)

    def _new_tokens(self, grant: Grant, *, refresh: bool) -> dict[str, Any]:
        """A token answer for ``grant``: a new access token, and a new refresh token."""
        behaviour = self.behaviour
        answer: dict[str, Any] = {
            "access_token": "ya29.stub-access-" + secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": behaviour.expires_in,
            "scope": grant.scope,
        }
        grant.access_tokens[answer["access_token"]] = time.time() + behaviour.expires_in
        if refresh:
            answer["refresh_token"] = "1//stub-refresh-" + secrets.token_urlsafe(24)
            grant.refresh_tokens.append(answer["refresh_token"])
        if behaviour.omit_expires_in:
            del answer["expires_in"]
        return answer

    def _refresh(self, presented: str) -> Response:
        """The refresh_token grant: rotate; a spent token presented again ends the grant."""
        with self._lock:
            grant = self.grant_of(presented) if presented else None
            if grant is None or presented not in grant.refresh_tokens:
                return self._invalid_grant("unknown refresh token")
            state = grant.refresh_token_state(presented)
            if state == "revoked":
                return self._invalid_grant(f"the grant was revoked ({grant.revoked})")
            if state == "spent":
                grant.reuse_count += 1
                grant.revoked = "reuse"
                return self._invalid_grant("refresh token reused; the grant is revoked")
            answer = self._new_tokens(grant, refresh=True)
            self.refreshed.append(answer)
        return self._json(answer)

    def _invalid_grant(self, description: str) -> Response:
        return self._json({"error": "invalid_grant", "error_description": description}, 400)

    def _id_token(self, grant: dict[str, str], access_token: str) -> str:
        now = int(time.time())
        digest = hashlib.sha256(access_token.encode()).digest()
        claims = {
            "iss": self.issuer, "aud": self.client_id, "azp": self.client_id,
            "iat": now, "exp": now + 3600, "nonce": grant.get("nonce"),
            "at_hash": base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode(),
            **self._id_token_account(),
        }
        claims.update(self.behaviour.id_token_claims)
        key = self.foreign_key if self.behaviour.sign_with_foreign_key else self.key
        return jwt.encode({"alg": "RS256", "kid": "stub-1", "typ": "JWT"}, claims, key)

    def _id_token_account(self) -> dict[str, Any]:
        account, kept = self.behaviour.account, self.behaviour.id_token_account_claims
        if kept is None:
            return dict(account)
        return {name: value for name, value in account.items() if name in kept}

    def _userinfo(self, request: Request) -> Response:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        with self._lock:
            grant = self.grant_of(token) if token else None
            ok = grant is not None and grant.access_token_live(token)
            self.userinfo_requests.append({"ok": ok})
        if not ok:
            return self._json({"error": "invalid_token"}, 401)
        return self._json(self.behaviour.account)

    def _revoke(self, request: Request) -> Response:
        if self._client_authenticated(request) is None:
            return self._json({"error": "invalid_client"}, 401)
        self.revocations.append(dict(request.form))
        if self.behaviour.revocation_status == 200:
            self._apply_revocation(request.form.get("token", ""),
                                   request.form.get("token_type_hint", ""))
        return Response("", status=self.behaviour.revocation_status)

    def _apply_revocation(self, token: str, hint: str) -> None:
        """RFC 7009: the current refresh token ends its grant; an access token ends itself.

        A spent refresh token is invalid already: revoking it changes nothing, so the grant
        lives on with the refresh token that replaced it.
        """
        with self._lock:
            grant = self.grant_of(token) if token else None
            if grant is None:
                found = "unknown"
            elif token in grant.refresh_tokens:
                found = grant.refresh_token_state(token)
                if found == "current":
                    grant.revoked = "revocation"
            else:
                found = "access"
                grant.revoked_access_tokens.add(token)
            self.revoked.append({"token_type_hint": hint, "found": found})
