"""The JWT bearer grant (RFC 7523 section 2.1) and ``private_key_jwt`` client authentication
(section 2.2): every signature made with a private key, by Authlib.

Two callers of the grant: a Google service account (the uploaded key file signs, ``scope`` is
a claim of the assertion, as Google documents it) and an ``oauth2`` provider with
``grant_type = "jwt_bearer"`` (the providers file's key signs, ``scope`` is a parameter of the
request, as RFC 7523 has it). Either way the request goes through the provider's
:class:`~vault.oauth.session.ProviderSession` and its answer through
:class:`~vault.oauth.tokens.NewTokens`, like every other grant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.oauth2.rfc7523 import JWTBearerGrant, PrivateKeyJWT
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.session import ProviderSession, transport_failure
from vault.providers.registry import Provider
from vault.providers.signing_keys import UnusableKey, signing_algorithm

# Google: "The maximum value allowed is 1 hour after the issued time."
ASSERTION_LIFETIME_SECONDS = 3600
# A refused assertion means the key (or what it may do) is gone: a person must act.
_REJECTED = frozenset({"invalid_grant", "unauthorized_client", "invalid_client",
                       "access_denied"})


@dataclass(frozen=True)
class Assertion:
    """What one JWT bearer assertion says, and the key that signs it (never in a repr)."""

    private_key: str = field(repr=False)
    issuer: str
    audience: str
    subject: str | None = None
    key_id: str | None = None
    scope: str | None = None
    # Google wants the scopes as a claim of the assertion; RFC 7523 as a request parameter.
    scope_in_claims: bool = False


class _NoClientAuth(requests.auth.AuthBase):
    """No client authentication: the signed assertion is the only credential sent."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def sign_assertion(assertion: Assertion, *, now: datetime) -> str:
    """The assertion as a signed JWT (Authlib's RFC 7523 support): ``iss``, ``sub`` when
    set, ``aud``, ``iat``, ``exp`` an hour later, ``jti``; ``kid`` in the header when known."""
    try:
        algorithm = signing_algorithm(assertion.private_key)
    except UnusableKey as error:
        raise GrantRejected(f"the signing key {error}") from None
    header: dict[str, Any] = {"alg": algorithm, "typ": "JWT"}
    if assertion.key_id:
        header["kid"] = assertion.key_id
    claims = {"scope": assertion.scope} if assertion.scope_in_claims and assertion.scope else None
    issued = int(now.timestamp())
    try:
        return JWTBearerGrant.sign(
            signing_key(assertion.private_key), issuer=assertion.issuer,
            audience=assertion.audience, subject=assertion.subject, issued_at=issued,
            expires_at=issued + ASSERTION_LIFETIME_SECONDS, claims=claims, header=header,
        )
    except (JoseError, ValueError) as error:
        raise GrantRejected(f"the assertion cannot be signed ({type(error).__name__})") from None


def request_token(
    provider: Provider, session: ProviderSession, url: str, assertion: Assertion,
    *, now: datetime, timeout: float, client_auth: bool,
) -> dict[str, Any]:
    """POST a freshly signed assertion to the token endpoint; the answer as a dict.

    ``client_auth``: whether the provider's client authenticates too (a configured client
    id); Google's service accounts send the assertion alone.
    """
    params: dict[str, Any] = {"assertion": sign_assertion(assertion, now=now)}
    if assertion.scope and not assertion.scope_in_claims:
        params["scope"] = assertion.scope
    try:
        answer = session.fetch_token(
            url, grant_type=JWTBearerGrant.GRANT_TYPE, timeout=timeout,
            auth=None if client_auth else _NoClientAuth(), **params,
        )
    except AuthlibBaseError as error:
        description = f": {error.description}" if error.description else ""
        reason = f"{error.error}{description}"
        if error.error in _REJECTED:
            raise GrantRejected(reason) from None
        raise ProviderFailure(reason) from None
    except (requests.RequestException, ValueError) as error:
        raise transport_failure(error) from None
    finally:
        session.token = None
    return dict(answer)


def signing_key(pem: str) -> RSAKey | ECKey:
    """A PEM private key as the joserfc key Authlib signs with (RSA or EC)."""
    key = load_pem_private_key(pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(pem)
    return RSAKey.import_key(pem)


def client_key(provider: Provider) -> RSAKey | ECKey:
    """The key ``private_key_jwt`` signs with, where Authlib expects the client secret."""
    assert provider.client_private_key is not None  # checked at start-up
    return signing_key(provider.client_private_key)


def private_key_jwt(provider: Provider) -> PrivateKeyJWT:
    """Authlib's ``private_key_jwt`` client authentication for ``provider``'s key.

    No fixed audience: each assertion is addressed to the URL it is sent to (the token,
    revocation or introspection endpoint), which RFC 7523 section 3 allows and
    OpenID Connect Core section 9 names.
    """
    assert provider.client_private_key is not None  # checked at start-up
    headers = {"kid": provider.client_key_id} if provider.client_key_id else None
    return PrivateKeyJWT(headers=headers, alg=signing_algorithm(provider.client_private_key))
