"""The HTTP client every provider request goes through: an Authlib session that never
refreshes a token on its own.

Authlib's ``OAuth2Session`` refreshes a token it holds whenever that token expires within
its leeway (60 s) and keeps the answer to itself. A provider that rotates refresh tokens then
sees the vault present a spent one at the next real refresh, and revokes the whole grant.
Here a held token is always sent as it is: only the refresh engine, through
:mod:`vault.oauth.tokens`, asks for new tokens, and it stores what it gets.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies

from vault.oauth.errors import ProviderFailure
from vault.oauth.lifetimes import lifetime_seconds


class ProviderSession(OAuth2Session):
    """``OAuth2Session`` without auto-refresh, reading the proxy environment once per origin.

    requests looks the proxy settings up in the environment on every request, scanning all of
    ``os.environ`` twice, which cost about as much CPU as the rest of a token exchange. This
    client remembers what the environment said per scheme and host, and otherwise merges
    settings exactly as :meth:`requests.Session.merge_environment_settings` does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._environment: dict[tuple[str, str, str | None], tuple[dict, str | None]] = {}
        for hook in ("refresh_token_response", "access_token_response"):
            self.register_compliance_hook(hook, raise_for_unavailable)
            self.register_compliance_hook(hook, state_lifetimes_plainly)

    def ensure_active_token(self, token: Any = None) -> bool:
        """Never refresh behind the caller's back: the token is sent as it is."""
        return True

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        """As requests does it, with the environment's answer cached per origin."""
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


def raise_for_unavailable(response: requests.Response) -> requests.Response:
    """Turn 429 and 5xx into :class:`ProviderFailure` before anything parses the answer."""
    status = response.status_code
    if status == 429 or status >= 500:
        label = "rate limited" if status == 429 else "server error"
        raise ProviderFailure(
            f"the provider answered HTTP {status} ({label})",
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    return response


def state_lifetimes_plainly(response: requests.Response) -> requests.Response:
    """Rewrite a token answer's lifetimes as whole seconds, or drop the unusable ones.

    Authlib computes an expiry from ``expires_in`` as soon as a token answer is parsed, with
    ``int()``: "3600.5" or "soon" would fail there and Infinity overflow. What the vault
    makes of a lifetime is :func:`~vault.oauth.lifetimes.lifetime_seconds`' decision, so it
    is applied before Authlib sees the answer.
    """
    try:
        answer = response.json()
    except ValueError:
        return response  # not JSON: the caller's parsing reports it
    if not isinstance(answer, dict):
        return response
    for name in ("expires_in", "refresh_token_expires_in"):
        if name in answer:
            seconds = lifetime_seconds(answer[name])
            if seconds is None:
                del answer[name]
            else:
                answer[name] = seconds
    response._content = json.dumps(answer).encode()
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


def transport_failure(error: Exception, what: str = "the token endpoint") -> ProviderFailure:
    """A :class:`ProviderFailure` for a network-level error, naming only its class."""
    if isinstance(error, requests.Timeout):
        return ProviderFailure(f"{what} did not answer in time")
    if isinstance(error, requests.ConnectionError):
        return ProviderFailure(f"{what} could not be reached")
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return ProviderFailure(f"unexpected answer from {what} (HTTP {error.response.status_code})")
    # Only the class name: a message could quote the request, and with it a credential.
    return ProviderFailure(f"{what} request failed ({type(error).__name__})")
