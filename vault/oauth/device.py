"""The device authorization grant (RFC 8628): the two requests it makes of a provider.

* :func:`request_code` asks the device authorization endpoint for a device code and the user
  code a person enters at the verification URL (section 3.1);
* :func:`poll` asks the token endpoint whether the person has answered (section 3.4), with
  the ``urn:ietf:params:oauth:grant-type:device_code`` grant.

Both authenticate as the provider's OAuth client through Authlib
(:func:`vault.oauth.tokens.new_session`: the same client authentication as every token
request), with the provider timeout; 429 and 5xx become :class:`ProviderFailure` before any
answer is parsed. The device code is a secret: it is never logged, and messages never quote it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.common.errors import AuthlibBaseError

from vault.oauth.discovery import DiscoveryError, endpoint, token_endpoint
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.lifetimes import lifetime_seconds
from vault.oauth.session import raise_for_unavailable, transport_failure
from vault.oauth.tokens import new_session, provider_timeout
from vault.providers.registry import Provider

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 section 3.2: "If no value is provided, clients MUST use 5 as the default."
DEFAULT_INTERVAL = 5
# Section 3.5: slow_down means "the interval MUST be increased by 5 seconds".
SLOW_DOWN_SECONDS = 5
# No provider asks for more; a larger value would leave the page looking stuck.
MAX_INTERVAL = 300


@dataclass(frozen=True)
class DeviceCode:
    """The device authorization endpoint's answer, checked (section 3.2)."""

    device_code: str = field(repr=False)
    user_code: str = field(repr=False)
    verification_uri: str
    verification_uri_complete: str | None = field(repr=False)
    expires_in: int
    interval: int


class PollOutcome(str, enum.Enum):
    PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    APPROVED = "approved"
    DENIED = "access_denied"
    EXPIRED = "expired_token"


@dataclass(frozen=True)
class Poll:
    """One poll's result; ``token`` is the token endpoint's answer once approved."""

    outcome: PollOutcome
    token: dict[str, Any] | None = field(default=None, repr=False)


def device_authorization_endpoint(provider: Provider) -> str:
    """Where to ask for a device code: explicit, or the discovery document's."""
    url = endpoint(provider, "device_authorization_endpoint")
    if not url:
        raise DiscoveryError(f"{provider.title} advertises no device authorization endpoint")
    return url


def request_code(provider: Provider) -> DeviceCode:
    """Ask for a device code and user code for the provider's scopes.

    Raises :class:`GrantRejected` when the provider refuses the client or the scopes,
    :class:`ProviderFailure` when it cannot be used right now or answers nonsense.
    """
    url = device_authorization_endpoint(provider)
    form = {"scope": provider.scope} if provider.scope else {}
    with new_session(provider) as session:
        auth = session.client_auth(session.token_endpoint_auth_method)
        try:
            response = session.post(
                url, data=form, auth=auth, timeout=provider_timeout(),
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as error:
            raise transport_failure(error, "the device authorization endpoint") from None
    raise_for_unavailable(response)
    try:
        answer = response.json()
    except ValueError:
        raise ProviderFailure("the device authorization endpoint did not answer JSON "
                              f"(HTTP {response.status_code})") from None
    if not isinstance(answer, dict):
        raise ProviderFailure("the device authorization endpoint did not answer a JSON object")
    if response.status_code != 200 or "error" in answer:
        reason = _reason(answer.get("error"), answer.get("error_description"))
        raise GrantRejected(f"the provider refused the device authorization request: {reason}")
    return _device_code(answer)


def _device_code(answer: dict[str, Any]) -> DeviceCode:
    # Google's endpoint names the URL "verification_url" (its older draft spelling).
    verification_uri = answer.get("verification_uri") or answer.get("verification_url")
    complete = answer.get("verification_uri_complete")
    codes = (answer.get("device_code"), answer.get("user_code"))
    if not all(isinstance(code, str) and code for code in codes):
        raise ProviderFailure("the device authorization endpoint answered without its codes")
    if not _is_url(verification_uri):
        raise ProviderFailure("the device authorization endpoint answered without a usable "
                              "verification URL")
    expires_in = lifetime_seconds(answer.get("expires_in"))
    if expires_in is None:
        raise ProviderFailure("the device authorization endpoint answered without a lifetime")
    interval = lifetime_seconds(answer.get("interval")) or DEFAULT_INTERVAL
    return DeviceCode(
        device_code=answer["device_code"],
        user_code=answer["user_code"],
        verification_uri=str(verification_uri),
        verification_uri_complete=complete if _is_url(complete) else None,
        expires_in=expires_in,
        interval=min(interval, MAX_INTERVAL),
    )


def poll(provider: Provider, device_code: str) -> Poll:
    """Ask the token endpoint once whether the person answered (RFC 8628 section 3.4).

    ``authorization_pending``, ``slow_down``, ``access_denied`` and ``expired_token`` are
    outcomes, not errors; any other refusal raises :class:`GrantRejected`, and an outage
    :class:`ProviderFailure` (poll again later).
    """
    url = token_endpoint(provider)
    session = new_session(provider)
    try:
        answer = session.fetch_token(
            url, grant_type=DEVICE_CODE_GRANT, device_code=device_code,
            timeout=provider_timeout(),
        )
    except AuthlibBaseError as error:
        for outcome in (PollOutcome.PENDING, PollOutcome.SLOW_DOWN, PollOutcome.DENIED,
                        PollOutcome.EXPIRED):
            if error.error == outcome.value:
                return Poll(outcome)
        raise GrantRejected(_reason(error.error, error.description)) from None
    except (requests.RequestException, ValueError) as error:
        raise transport_failure(error) from None
    finally:
        session.token = None
        session.close()
    token = dict(answer)
    if not token.get("access_token"):
        raise ProviderFailure("the token endpoint answered without an access_token")
    return Poll(PollOutcome.APPROVED, token)


def _reason(error: object, description: object) -> str:
    text = str(error or "unknown error")
    if description:
        text += f": {description}"
    return text[:300]


def _is_url(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 2048:
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
