"""Provider calls that yield a new access token, with every failure classified.

Three ways to a new access token: the OAuth ``refresh_token`` grant and the
``client_credentials`` grant (both through Authlib), and the GreenInvoice API-key exchange.
Every call has a timeout. A failure is one of:

* :class:`GrantRejected`: the provider refused the credentials (``invalid_grant``,
  ``unauthorized_client``, a key exchange answered 400/401/403); only a person can fix it.
* :class:`ProviderFailure`: 5xx, 429, timeout, network or discovery trouble; try later,
  not before ``retry_after`` seconds when the provider said so.
* :class:`NotRefreshable`: nothing stored or configured could get a new token.

Exception messages never carry a credential: the caller scrubs them once more anyway.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import os
from urllib.parse import urlsplit

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from flask import current_app
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies

from vault.oauth.discovery import DiscoveryError, token_endpoint
from vault.providers.registry import CLIENT_CREDENTIALS, Provider

DEFAULT_PROVIDER_TIMEOUT_SECONDS = 10
# Errors that mean the grant itself is gone (RFC 6749 section 5.2).
REJECTED_GRANT_ERRORS = frozenset({"invalid_grant", "unauthorized_client"})
_sessions = threading.local()


class GrantRejected(Exception):
    """The provider refused the stored grant or credentials; a person must reconnect."""


class ProviderFailure(Exception):
    """The provider could not be used right now; ``retry_after`` is its hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class NotRefreshable(Exception):
    """Nothing stored for the connection can obtain a new access token."""


@dataclass(frozen=True)
class Credentials:
    """The decrypted values a refresh may use (never logged: no repr of values)."""

    refresh_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NewTokens:
    """What the provider answered, normalised; ``None`` expiry means "unknown"."""

    access_token: str = field(repr=False)
    expires_at: datetime | None
    refresh_token: str | None = field(default=None, repr=False)
    refresh_token_expires_at: datetime | None = None
    id_token: str | None = field(default=None, repr=False)
    scope: str | None = None


def provider_timeout() -> float:
    """Seconds a token request may take (``VAULT_PROVIDER_TIMEOUT_SECONDS``)."""
    return float(
        current_app.config.get("VAULT_PROVIDER_TIMEOUT_SECONDS", DEFAULT_PROVIDER_TIMEOUT_SECONDS)
    )


def request_tokens(
    provider: Provider, credentials: Credentials, *, now: datetime, timeout: float
) -> NewTokens:
    """Ask the provider for a new access token with whatever the connection holds."""
    if provider.type == "api_key":
        if not (provider.token_url and credentials.api_key and credentials.api_secret):
            raise NotRefreshable("this API-key provider has no token exchange to refresh with")
        return _exchange_api_key(provider, credentials, now=now, timeout=timeout)
    if credentials.refresh_token:
        return _oauth_grant(
            provider, now=now, timeout=timeout, refresh_token=credentials.refresh_token
        )
    if provider.uses_client_credentials:  # machine-to-machine: the client secret is the grant
        return _oauth_grant(provider, now=now, timeout=timeout)
    raise NotRefreshable("no refresh token is stored; connect the account again")


def _oauth_grant(
    provider: Provider, *, now: datetime, timeout: float, refresh_token: str | None = None
) -> NewTokens:
    try:
        url = token_endpoint(provider)
    except DiscoveryError as error:
        raise ProviderFailure(str(error)) from None
    session = _oauth_session(provider)
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
        raise _transport_failure(error) from None
    finally:
        session.token = None  # the client keeps the last answer; nothing should linger
    if not answer.get("access_token"):
        raise ProviderFailure("the token endpoint answered without an access_token")
    # Authlib copies the old refresh token into the answer when none came back.
    rotated = answer.get("refresh_token")
    return NewTokens(
        access_token=answer["access_token"],
        expires_at=_after(now, answer.get("expires_in")),
        refresh_token=rotated if rotated and rotated != refresh_token else None,
        refresh_token_expires_at=_after(now, answer.get("refresh_token_expires_in")),
        id_token=answer.get("id_token") or None,
        scope=answer.get("scope") if isinstance(answer.get("scope"), str) else None,
    )


class _ReusedOAuth2Session(OAuth2Session):
    """An OAuth2Session kept for many refreshes, that reads the environment once per origin.

    requests looks the proxy settings up in the environment on every request, scanning all
    of ``os.environ`` twice, which cost about as much CPU as the rest of the HTTP exchange.
    This client remembers what the environment said per scheme and host, and otherwise
    merges settings exactly as :meth:`requests.Session.merge_environment_settings` does.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._environment: dict[tuple[str, str, str | None], tuple[dict, str | None]] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if self.trust_env:
            no_proxy = proxies.get("no_proxy") if proxies is not None else None
            parts = urlsplit(url)
            key = (parts.scheme, parts.netloc, no_proxy)
            found = self._environment.get(key)
            if found is None:
                found = (
                    get_environ_proxies(url, no_proxy=no_proxy),
                    os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
                )
                self._environment[key] = found
            env_proxies, ca_bundle = found
            if proxies is not None:
                for name, value in env_proxies.items():
                    proxies.setdefault(name, value)
            if verify is True or verify is None:
                verify = ca_bundle or verify
        return {
            "proxies": merge_setting(proxies, self.proxies),
            "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify),
            "cert": merge_setting(cert, self.cert),
        }


def _oauth_session(provider: Provider) -> OAuth2Session:
    """This thread's client for the provider, kept so that its connections are reused.

    A refresh then costs no new TCP and TLS handshake with the provider. Keyed by the
    client's credentials as well, so a changed providers file gets a new client.
    """
    sessions = _sessions.__dict__.setdefault("by_client", {})
    key = (provider.key, provider.client_id, provider.client_secret,
           provider.token_endpoint_auth_method)
    session = sessions.get(key)
    if session is None:
        session = _ReusedOAuth2Session(
            client_id=provider.client_id,
            client_secret=provider.client_secret,
            token_endpoint_auth_method=provider.token_endpoint_auth_method,
        )
        for hook in ("refresh_token_response", "access_token_response"):
            session.register_compliance_hook(hook, _raise_for_unavailable)
        sessions[key] = session
    return session


def _exchange_api_key(
    provider: Provider, credentials: Credentials, *, now: datetime, timeout: float
) -> NewTokens:
    """GreenInvoice: POST the key id and secret, get a JWT and its expiry (unix seconds)."""
    try:
        response = requests.post(
            provider.token_url,
            json={"id": credentials.api_key, "secret": credentials.api_secret},
            headers={"Accept": "application/json"},
            timeout=timeout,
        )
    except requests.RequestException as error:
        raise _transport_failure(error) from None
    _raise_for_unavailable(response)
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


def _raise_for_unavailable(response: requests.Response) -> requests.Response:
    """Compliance hook: turn 429 and 5xx into :class:`ProviderFailure` before parsing."""
    status = response.status_code
    if status == 429 or status >= 500:
        label = "rate limited" if status == 429 else "server error"
        raise ProviderFailure(
            f"token endpoint {label} (HTTP {status})",
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    return response


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _transport_failure(error: Exception) -> ProviderFailure:
    if isinstance(error, requests.Timeout):
        return ProviderFailure("the token endpoint did not answer in time")
    if isinstance(error, requests.ConnectionError):
        return ProviderFailure("the token endpoint could not be reached")
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        return ProviderFailure(f"unexpected answer from the token endpoint (HTTP {status})")
    # Only the class name: a message could quote the request, and with it a credential.
    return ProviderFailure(f"token endpoint request failed ({type(error).__name__})")


def _oauth_reason(error: AuthlibBaseError) -> str:
    description = f": {error.description}" if error.description else ""
    return f"{error.error}{description}"


def _after(now: datetime, seconds: object) -> datetime | None:
    """``now + seconds``; None ("unknown") when the provider gave no usable number."""
    try:
        seconds = int(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return now + timedelta(seconds=seconds) if seconds >= 0 else None


def _timestamp(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), tz=timezone.utc)  # type: ignore[arg-type]
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
