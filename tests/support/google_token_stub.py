"""Google's OAuth 2.0 token endpoint for service accounts, on loopback.

Real HTTP (werkzeug, one thread per request). It checks a JWT bearer assertion exactly as
"Using OAuth 2.0 for Server to Server Applications" documents it, with its own code (the
``cryptography`` package, not the Authlib that signs it in the vault):
https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests

* the form is ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion``,
  nothing else;
* the header is ``{"alg": "RS256", "typ": "JWT", "kid": <the key's private_key_id>}`` and the
  RS256 signature verifies with the public half of that key of that service account;
* ``iss`` is the service account's e-mail; ``sub``, when present, a user the account may
  impersonate (domain-wide delegation); ``aud`` is ``https://oauth2.googleapis.com/token``;
  ``scope`` is space-separated scopes the account was granted; ``iat`` is not in the future,
  ``exp`` not past and ``exp - iat`` at most 3600.

Anything else is refused as Google does (400 ``invalid_grant``, 401 ``unauthorized_client``
for a refused delegation or scope). Tokens are short-lived (``expires_in``, 30 s by default),
so renewing them goes through the vault's refresh engine.

    with GoogleTokenStub() as google:
        key_file = google.create_key("robot@proj.iam.gserviceaccount.com")
        ... google.token_url ... google.accepted ...
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from werkzeug.wrappers import Request, Response

from tests.browser.fixtures import LiveServer

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPES = ("https://www.googleapis.com/auth/calendar",
          "https://www.googleapis.com/auth/drive.readonly")
_CLOCK_SKEW = 5


@dataclass
class ServiceAccount:
    """One service account: its keys by id (public halves), whom it may impersonate."""

    email: str
    project: str
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    delegates: set[str] = field(default_factory=set)


def pem_of(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class GoogleTokenStub:
    """Google's token endpoint for JWT bearer assertions; see the module docstring."""

    def __init__(self, *, expires_in: int = 30, scope_as_parameter: bool = False):
        self.expires_in = expires_in
        # True: RFC 7523 as written (any oauth2 provider with grant_type = "jwt_bearer"):
        # the scopes come as the request's ``scope`` parameter, not as a claim.
        self.scope_as_parameter = scope_as_parameter
        self.accounts: dict[str, ServiceAccount] = {}
        # Each accepted assertion's claims and the access token it bought, in order.
        self.accepted: list[tuple[dict[str, Any], str]] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._server = LiveServer(self._app)
        self.base_url = self._server.url

    def __enter__(self) -> GoogleTokenStub:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def create_key(
        self, email: str, project: str = "vault-tests", *, delegates: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A new key of the service account (created when new), as Google's JSON key file."""
        account = self.accounts.setdefault(email, ServiceAccount(email, project))
        account.delegates.update(delegates)
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        account.keys[key_id] = private.public_key()
        return {
            "type": "service_account", "project_id": project, "private_key_id": key_id,
            "private_key": pem_of(private), "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": GOOGLE_TOKEN_URI,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
            "universe_domain": "googleapis.com",
        }

    def delete_key(self, email: str, key_id: str) -> None:
        """Delete a key in "Google Cloud": its assertions are refused from now on."""
        del self.accounts[email].keys[key_id]

    def tokens_of(self, email: str) -> list[str]:
        """The access tokens issued to a service account."""
        return [token for claims, token in self.accepted if claims["iss"] == email]

    # -- HTTP --------------------------------------------------------------------------------

    def _app(self, environ, start_response):
        request = Request(environ)
        if request.path != "/token" or request.method != "POST":
            response = Response("not found", status=404)
        else:
            response = self._token(request)
        return response(environ, start_response)

    def _token(self, request: Request) -> Response:
        try:
            claims = self._check(request)
        except _Refused as refused:
            with self._lock:
                self.refused.append(refused.description)
            return _json({"error": refused.error, "error_description": refused.description},
                         refused.status)
        token = "ya29." + secrets.token_urlsafe(32)
        with self._lock:
            self.accepted.append((claims, token))
        return _json({"access_token": token, "expires_in": self.expires_in,
                      "token_type": "Bearer"})

    def _check(self, request: Request) -> dict[str, Any]:
        form = request.form
        expected = ["assertion", "grant_type", "scope"] if self.scope_as_parameter else [
            "assertion", "grant_type"]
        if sorted(form) != expected:
            raise _Refused("invalid_request", f"unexpected parameters: {sorted(form)}")
        if form["grant_type"] != JWT_BEARER:
            raise _Refused("unsupported_grant_type", "Invalid grant_type: "
                           + form["grant_type"])
        if request.authorization is not None:
            raise _Refused("invalid_request", "no client authentication is expected")
        try:
            header_part, payload_part, signature_part = form["assertion"].split(".")
            header = json.loads(_unb64(header_part))
            claims = json.loads(_unb64(payload_part))
            signature = _unb64(signature_part)
        except ValueError:
            raise _Refused("invalid_grant", "Invalid JWT: not a JWS compact serialization.")
        if header.get("alg") != "RS256" or header.get("typ", "JWT") != "JWT":
            raise _Refused("invalid_grant", "Invalid JWT: alg must be RS256.")
        account = self.accounts.get(claims.get("iss"))
        if account is None:
            raise _Refused("invalid_grant", "Invalid JWT: iss is not a service account.")
        public = account.keys.get(header.get("kid"))
        if public is None:
            raise _Refused("invalid_grant", "Invalid JWT Signature.")  # unknown or deleted key
        try:
            public.verify(signature, f"{header_part}.{payload_part}".encode(),
                          padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise _Refused("invalid_grant", "Invalid JWT Signature.")
        if claims.get("aud") != GOOGLE_TOKEN_URI:
            raise _Refused("invalid_grant", "Invalid JWT: aud must be the token URI.")
        now = time.time()
        issued, expires = claims.get("iat"), claims.get("exp")
        if not (isinstance(issued, int) and isinstance(expires, int)):
            raise _Refused("invalid_grant", "Invalid JWT: iat and exp must be integers.")
        if issued > now + _CLOCK_SKEW or expires <= now or expires - issued > 3600:
            raise _Refused("invalid_grant", "Invalid JWT: Token must be a short-lived token "
                           "(60 minutes) and in a reasonable timeframe.")
        scope = form["scope"] if self.scope_as_parameter else claims.get("scope")
        if self.scope_as_parameter and "scope" in claims:
            raise _Refused("invalid_grant", "Invalid JWT: scope is a request parameter here.")
        if not isinstance(scope, str) or not scope or scope != " ".join(scope.split()):
            raise _Refused("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        if any(name not in SCOPES for name in scope.split(" ")):
            raise _Refused("unauthorized_client", "Client is unauthorized to retrieve access "
                           "tokens using this method, or client not authorized for any of the "
                           "scopes requested.", 401)
        subject = claims.get("sub")
        if subject is not None and subject not in account.delegates:
            raise _Refused("unauthorized_client", "Client is unauthorized to retrieve access "
                           "tokens using this method, or client not authorized for any of the "
                           "scopes requested.", 401)
        unknown = set(claims) - {"iss", "sub", "aud", "scope", "iat", "exp", "jti"}
        if unknown:
            raise _Refused("invalid_grant", f"Invalid JWT: unexpected claims {sorted(unknown)}.")
        return {**claims, "scope": scope}


class _Refused(Exception):
    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
