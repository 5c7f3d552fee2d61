"""Token requests: the only code that asks a provider for tokens or sends it one.

Five requests, each with the provider timeout, each failure classified
(:mod:`vault.oauth.errors`):

* :func:`refresh_token_grant` and :func:`client_credentials_grant` at the token endpoint,
  through Authlib with the provider's client authentication (a secret, or ``private_key_jwt``);
* :func:`jwt_bearer_grant`, a signed assertion for a token (:mod:`vault.oauth.assertions`);
* :func:`exchange_api_key`, GreenInvoice's trade of a key id and secret for a JWT;
* :func:`fetch_userinfo` and :func:`revoke`, which send a token without ever renewing it.

Answers are normalised into :class:`NewTokens`; lifetimes are read by
:mod:`vault.oauth.lifetimes` alone.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from flask import current_app

from vault.oauth import assertions
from vault.oauth.assertions import Assertion, request_token
from vault.oauth.discovery import endpoint, token_endpoint
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.lifetimes import lifetime_end
from vault.oauth.session import ProviderSession, raise_for_unavailable, transport_failure
from vault.providers.registry import CLIENT_CREDENTIALS, Provider
from vault.providers.signing_keys import PRIVATE_KEY_JWT

# Errors that mean the grant itself is gone (RFC 6749 section 5.2).
REJECTED_GRANT_ERRORS = frozenset({"invalid_grant", "unauthorized_client"})
_sessions = threading.local()


@dataclass(frozen=True)
class NewTokens:
    """What the provider answered, normalised; ``None`` expiry means "unknown"."""

    access_token: str = field(repr=False)
    expires_at: datetime | None
    refresh_token: str | None = field(default=None, repr=False)
    refresh_token_expires_at: datetime | None = None
    id_token: str | None = field(default=None, repr=False)
    scope: str | None = None

    @classmethod
    def from_answer(
        cls, answer: dict[str, Any], *, now: datetime, spent_refresh_token: str | None = None
    ) -> NewTokens:
        """Normalise a token endpoint's JSON answer (RFC 6749 section 5.1)."""
        if not answer.get("access_token"):
            raise ProviderFailure("the token endpoint answered without an access_token")
        # Authlib copies the presented refresh token into the answer when none came back.
        rotated = answer.get("refresh_token")
        scope = answer.get("scope")
        if isinstance(scope, list | tuple):
            scope = " ".join(scope)
        return cls(
            access_token=answer["access_token"],
            expires_at=lifetime_end(now, answer.get("expires_in")),
            refresh_token=rotated if rotated and rotated != spent_refresh_token else None,
            refresh_token_expires_at=lifetime_end(now, answer.get("refresh_token_expires_in")),
            id_token=answer.get("id_token") or None,
            scope=scope if isinstance(scope, str) else None,
        )


def refresh_token_grant(provider: Provider, refresh_token: str, *, now: datetime) -> NewTokens:
    """The ``refresh_token`` grant: new tokens for a stored refresh token."""
    return _token_request(provider, now=now, refresh_token=refresh_token)


def client_credentials_grant(provider: Provider, *, now: datetime) -> NewTokens:
    """The ``client_credentials`` grant: a token for the app's own client."""
    return _token_request(provider, now=now)


def jwt_bearer_grant(
    provider: Provider, assertion: Assertion, *, now: datetime, client_auth: bool
) -> NewTokens:
    """The JWT bearer grant (RFC 7523): a token for a freshly signed ``assertion``."""
    answer = request_token(
        provider, _token_session(provider), token_endpoint(provider), assertion,
        now=now, timeout=provider_timeout(), client_auth=client_auth,
    )
    return NewTokens.from_answer(answer, now=now)


def _token_request(
    provider: Provider, *, now: datetime, refresh_token: str | None = None
) -> NewTokens:
    url = token_endpoint(provider)
    session = _token_session(provider)
    timeout = provider_timeout()
    try:
        if refresh_token is not None:
            answer = session.refresh_token(url, refresh_token=refresh_token, timeout=timeout)
        else:
            scope = {"scope": provider.scope} if provider.scope else {}
            answer = session.fetch_token(
                url, grant_type=CLIENT_CREDENTIALS, timeout=timeout, **scope
            )
    except AuthlibBaseError as error:
        rejected = REJECTED_GRANT_ERRORS if refresh_token is not None else (
            # With client credentials the client's own secret is the grant: refused, it
            # needs a person (a new secret, then Connect), not a retry.
            REJECTED_GRANT_ERRORS | {"invalid_client"}
        )
        if error.error in rejected:
            raise GrantRejected(_oauth_reason(error)) from None
        raise ProviderFailure(_oauth_reason(error)) from None
    except (requests.RequestException, ValueError) as error:
        raise transport_failure(error) from None
    finally:
        session.token = None  # the client keeps the last answer; nothing should linger
    return NewTokens.from_answer(dict(answer), now=now, spent_refresh_token=refresh_token)


def _token_session(provider: Provider) -> ProviderSession:
    """This thread's client for the provider, kept so that its connections are reused.

    A refresh then costs no new TCP and TLS handshake with the provider. Keyed by the
    client's credentials as well, so a changed providers file gets a new client.
    """
    sessions = _sessions.__dict__.setdefault("by_client", {})
    key = (provider.key, provider.client_id, provider.client_secret,
           provider.token_endpoint_auth_method, provider.client_private_key,
           provider.client_key_id)
    session = sessions.get(key)
    if session is None:
        session = sessions[key] = new_session(provider)
    return session


def new_session(provider: Provider, **kwargs: Any) -> ProviderSession:
    """A client authenticated as the provider's OAuth client (no token held).

    With ``private_key_jwt`` the client's private key signs a client assertion for every
    token and revocation request (the key stands where Authlib expects the secret).
    """
    private_key_jwt = provider.token_endpoint_auth_method == PRIVATE_KEY_JWT
    session = ProviderSession(
        client_id=provider.client_id,
        client_secret=(
            assertions.client_key(provider) if private_key_jwt else provider.client_secret
        ),
        token_endpoint_auth_method=provider.token_endpoint_auth_method,
        revocation_endpoint_auth_method=provider.token_endpoint_auth_method,
        default_timeout=provider_timeout(),
        **kwargs,
    )
    if private_key_jwt:
        session.register_client_auth_method(assertions.private_key_jwt(provider))
    return session


def exchange_api_key(
    provider: Provider, api_key: str, api_secret: str, *, now: datetime
) -> NewTokens:
    """GreenInvoice: POST the key id and secret, get a JWT and its expiry (unix seconds)."""
    if not provider.token_url:
        raise ProviderFailure(f"provider {provider.key} has no token_url to exchange keys at")
    try:
        response = requests.post(
            provider.token_url,
            json={"id": api_key, "secret": api_secret},
            headers={"Accept": "application/json"},
            timeout=provider_timeout(),
        )
    except requests.RequestException as error:
        raise transport_failure(error) from None
    raise_for_unavailable(response)
    if response.status_code in (400, 401, 403):
        raise GrantRejected(f"the provider refused the API key (HTTP {response.status_code})")
    try:
        answer = response.json()
        response.raise_for_status()
        token = answer["token"]
    except (ValueError, KeyError, TypeError, requests.HTTPError):
        raise ProviderFailure(
            f"unexpected answer from the key exchange (HTTP {response.status_code})"
        ) from None
    if not isinstance(token, str) or not token:
        raise ProviderFailure("the key exchange answered without a token")
    expires = answer.get("expires") or _jwt_expiry(token)
    return NewTokens(access_token=token, expires_at=_timestamp(expires))


def fetch_userinfo(provider: Provider, access_token: str) -> dict[str, Any]:
    """The userinfo endpoint's claims for ``access_token``, sent as it is, never renewed.

    Raises :class:`ProviderFailure` when there is no such endpoint or it does not answer
    a JSON object.
    """
    url = endpoint(provider, "userinfo_endpoint")
    if not url:
        raise ProviderFailure(f"{provider.title} has no userinfo endpoint")
    try:
        response = requests.get(
            url,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
            timeout=provider_timeout(),
        )
        raise_for_unavailable(response)
        response.raise_for_status()
        claims = response.json()
    except (requests.RequestException, ValueError) as error:
        raise transport_failure(error, "the userinfo endpoint") from None
    if not isinstance(claims, dict):
        raise ProviderFailure("the userinfo endpoint did not answer a JSON object")
    return claims


@dataclass(frozen=True)
class Revocation:
    """How a revocation went; ``problem`` is safe to show and store."""

    revoked: bool
    problem: str | None = None


def revoke(provider: Provider, tokens: Iterable[tuple[str, str]]) -> Revocation:
    """Revoke ``(token_type_hint, value)`` pairs in order at the provider (RFC 7009).

    Stops at the first failure. A provider without a revocation endpoint revokes nothing
    and reports no problem.
    """
    try:
        url = endpoint(provider, "revocation_endpoint")
    except ProviderFailure:
        return Revocation(False, "the provider's metadata could not be loaded")
    if not url:
        return Revocation(False)
    revoked_any = False
    with new_session(provider) as session:
        for hint, value in tokens:
            try:
                response = session.revoke_token(url, token=value, token_type_hint=hint)
            except requests.RequestException as error:
                return Revocation(revoked_any, f"revocation failed: {type(error).__name__}")
            if response.status_code != 200:
                return Revocation(
                    revoked_any, f"revocation failed: the provider answered {response.status_code}"
                )
            revoked_any = True
    return Revocation(revoked_any)


def provider_timeout() -> float:
    """Seconds any request to a provider may take (``VAULT_PROVIDER_TIMEOUT_SECONDS``)."""
    return float(current_app.config["VAULT_PROVIDER_TIMEOUT_SECONDS"])


def _oauth_reason(error: AuthlibBaseError) -> str:
    description = f": {error.description}" if error.description else ""
    return f"{error.error}{description}"


def _timestamp(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return datetime.fromtimestamp(int(value), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _jwt_expiry(token: str) -> int | None:
    """The ``exp`` claim of a JWT, read without verifying it (only to know when to renew)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return int(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
