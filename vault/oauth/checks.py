"""Credential checks: one cheap, read-only request that proves a stored credential works.

The HTTP side only (which check a connection gets, and what is stored, is
:mod:`vault.services.checks`' decision). Every request has the provider timeout and never
renews anything: an access token is sent as it is. Answers are classified like token
requests (:mod:`vault.oauth.errors`): 401 and 403 are :class:`GrantRejected` with the
provider's reason, scrubbed of the credential sent; 429, 5xx, timeouts and network trouble
are :class:`ProviderFailure`; any other answer than a 2xx is a :class:`ProviderFailure` too
(the credential is not proven wrong by it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import requests

from vault.oauth.discovery import endpoint
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.session import raise_for_unavailable, transport_failure
from vault.oauth.tokens import exchange_api_key, provider_timeout
from vault.providers.registry import Provider
from vault.redact import redact_known

__all__ = [
    "CheckAnswer",
    "NoCheck",
    "check_graph_identity",
    "check_key_exchange",
    "check_url",
    "check_userinfo",
    "check_voicenter",
]

MAX_REASON = 200


class NoCheck(Exception):
    """The provider offers nothing to check with (no userinfo endpoint, no check URL)."""


@dataclass(frozen=True)
class CheckAnswer:
    """What a successful check learnt: who the credential belongs to and, where the provider
    says so, when it expires (never a secret)."""

    identity: str | None = None
    expires_at: datetime | None = None


def check_userinfo(provider: Provider, access_token: str) -> CheckAnswer:
    """OAuth connections: the userinfo endpoint with the stored access token, as it is."""
    url = endpoint(provider, "userinfo_endpoint")
    if not url:
        raise NoCheck(f"{provider.title} has no userinfo endpoint to check the token with")
    answer = _get(provider, url, [access_token], headers=_bearer(access_token))
    claims = _json(answer)
    return CheckAnswer(identity=_identity(claims))


def check_url(
    provider: Provider, api_key: str, extra_params: Mapping[str, str] | None = None
) -> CheckAnswer:
    """API-key providers: ``check_url`` with the key sent as ``check_auth`` says."""
    if not provider.check_url:
        raise NoCheck(f"{provider.title} has no check_url")
    headers: dict[str, str] = {"Accept": "application/json"}
    params: dict[str, str] = dict(extra_params or {})
    how, _, name = provider.check_auth.partition(":")
    if how == "bearer":
        headers.update(_bearer(api_key))
    elif how == "header":
        headers[name] = api_key
    else:
        params[name] = api_key
    answer = _get(provider, provider.check_url, [api_key], headers=headers, params=params)
    try:
        claims = answer.json()
    except ValueError:
        claims = None  # any 2xx proves the key; the body is a bonus
    return CheckAnswer(identity=_identity(claims) if isinstance(claims, dict) else None)


def check_voicenter(provider: Provider, api_key: str, now: datetime) -> CheckAnswer:
    """Voicenter: the Call Log API over the last minute (``fromdate``/``todate`` in UTC are
    mandatory there), read-only: https://www.voicenter.com/API/Call-Log."""
    window = {
        "fromdate": (now - timedelta(minutes=1)).astimezone(timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S"
        ),
        "todate": now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return check_url(provider, api_key, window)


def check_graph_identity(provider: Provider, token: str) -> CheckAnswer:
    """WhatsApp/Meta: who the token is (``check_url``, the Graph API's ``/me``), then its
    expiry from ``debug_token`` when the Graph API tells it (0 means it never expires)."""
    identity = check_url(provider, token).identity
    assert provider.check_url is not None  # check_url above would have failed
    parts = urlsplit(provider.check_url)
    debug_url = f"{parts.scheme}://{parts.netloc}/debug_token"
    try:
        answer = _get(provider, debug_url, [token], params={"input_token": token},
                      headers=_bearer(token))
        data = _json(answer).get("data")
    except (GrantRejected, ProviderFailure):
        # /me proved the token; debug_token needs an app's token for some tokens.
        return CheckAnswer(identity=identity)
    if not isinstance(data, dict):
        return CheckAnswer(identity=identity)
    if data.get("is_valid") is False:
        raise GrantRejected(f"{provider.title} says the token is not valid")
    return CheckAnswer(identity=identity, expires_at=_unix_time(data.get("expires_at")))


def check_key_exchange(
    provider: Provider, api_key: str, api_secret: str, now: datetime
) -> CheckAnswer:
    """GreenInvoice: its key exchange (the JWT it answers is dropped: a check stores nothing)."""
    exchange_api_key(provider, api_key, api_secret, now=now)
    return CheckAnswer()


def _get(
    provider: Provider,
    url: str,
    secrets: list[str],
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> requests.Response:
    try:
        response = requests.get(
            url, headers=dict(headers or {}), params=dict(params or {}),
            timeout=provider_timeout(), allow_redirects=False,
        )
    except requests.RequestException as error:
        raise transport_failure(error, f"{provider.title}'s check") from None
    raise_for_unavailable(response)
    status = response.status_code
    if status in (401, 403):
        reason = _reason(response, secrets)
        raise GrantRejected(f"{provider.title} answered HTTP {status}" + (
            f": {reason}" if reason else ""))
    if not 200 <= status < 300:
        raise ProviderFailure(f"{provider.title} answered HTTP {status} to the check")
    return response


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        raise ProviderFailure("the check's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ProviderFailure("the check's answer is not a JSON object")
    return answer


def _reason(response: requests.Response, secrets: list[str]) -> str:
    """The provider's own words for a refusal (OAuth, Graph API or plain), scrubbed."""
    try:
        answer = response.json()
    except ValueError:
        return ""
    text: Any = None
    if isinstance(answer, dict):
        error = answer.get("error")
        text = answer.get("error_description") or answer.get("message")
        if isinstance(error, dict):  # the Graph API: {"error": {"message": ...}}
            text = text or error.get("message")
        elif isinstance(error, str):
            text = text or error
    if not isinstance(text, str):
        return ""
    return " ".join(redact_known(text, secrets).split())[:MAX_REASON]


def _identity(claims: Any) -> str | None:
    if not isinstance(claims, dict):
        return None
    for name in ("email", "name", "login", "preferred_username", "sub", "id"):
        value = claims.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)[:255]
    return None


def _unix_time(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
