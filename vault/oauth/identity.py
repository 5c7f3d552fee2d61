"""The authorization-code flow's two ends, for Connect, reconnect and staff sign-in alike.

:func:`start` sends the browser to the provider (PKCE S256, a state and, for OpenID
Connect, a nonce, all kept server-side by :mod:`vault.oauth.flow_state`). :func:`complete`
checks the answer (provider error, state, code, RFC 9207 ``iss``), exchanges the code, has
Authlib verify the id_token (signature, ``iss``, ``aud``, ``nonce``, expiry), and completes
its claims from the userinfo endpoint: the one identity step of every flow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client import MismatchingStateError, OAuthError
from flask import current_app, redirect, request, session
from joserfc.errors import JoseError
from werkzeug.wrappers import Response

from vault.oauth.clients import ProviderClient
from vault.oauth.discovery import server_metadata
from vault.oauth.errors import ProviderFailure
from vault.oauth.tokens import fetch_userinfo
from vault.providers.registry import Provider
from vault.redact import redact_known

# The key, in a flow's server-side state, of what start() was asked to remember.
_REMEMBERED = "vault_remembered"
# Errors from the code exchange and the id_token checks that mean "this answer is unusable".
_UNVERIFIABLE = (AuthlibBaseError, JoseError, ValueError, KeyError)


class IdentityError(Exception):
    """The flow cannot be completed; the message is safe to show (no secrets), ``status``
    is the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Authorization:
    """A completed flow: the token endpoint's answer and who the account is."""

    token: dict[str, Any]
    claims: dict[str, Any]


def start(
    client: ProviderClient, redirect_uri: str, *, remember: dict[str, Any] | None = None
) -> Response:
    """Redirect the browser to the provider's authorization page.

    ``remember``: what the callback must know of this flow (e.g. the reconnect link it was
    started from), kept with the flow's state, encrypted and server-side, never in the URL or
    the cookie; the callback reads it back with :func:`remembered`.
    """
    try:
        if remember is None:
            return client.authorize_redirect(redirect_uri)
        authorization = client.create_authorization_url(redirect_uri)
        client.save_authorize_data(
            redirect_uri=redirect_uri, **authorization, **{_REMEMBERED: remember}
        )
        return redirect(authorization["url"])
    except (ProviderFailure, requests.RequestException, ValueError, RuntimeError) as error:
        # Its discovery document could not be fetched or lacks the authorization endpoint.
        current_app.logger.warning(
            "%s: authorization cannot start: %s", client.provider.key, type(error).__name__
        )
        raise IdentityError(f"{client.provider.title} cannot be reached; try again in a moment.",
                            502) from None


def complete(client: ProviderClient) -> Authorization:
    """Check the provider's answer on the callback, exchange the code, verify the account.

    Raises :class:`IdentityError`; the flow's state is used up either way.
    """
    provider = client.provider
    try:
        issuer = _check_authorization_response(client)
    except IdentityError:
        discard_state(client)
        raise
    with _failures_as_identity_errors(provider):
        try:
            token = client.authorize_access_token(claims_options=_claims_options(client, issuer))
            if not token.get("access_token"):
                raise IdentityError(f"{provider.title} answered without an access token.")
            claims = _identity_claims(client, dict(token))
        except MismatchingStateError:
            raise IdentityError("This answer does not belong to a request started here, or "
                                "it was already used. Start again.") from None
        except OAuthError as error:
            # The token endpoint's own words, minus anything it echoed of what it was sent.
            said = redact_known(provider_error_text(error.error, error.description),
                                [provider.client_secret or "", request.args.get("code") or ""])
            raise IdentityError(f"{provider.title} refused to issue tokens: {said}") from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else "an error"
            raise IdentityError(f"{provider.title}'s token endpoint answered HTTP {status}.",
                                502) from None
        except requests.JSONDecodeError:
            raise IdentityError(f"{provider.title}'s token endpoint answered with something "
                                "that is not JSON.", 502) from None
    return Authorization(token=dict(token), claims=claims)


@contextmanager
def _failures_as_identity_errors(provider: Provider) -> Iterator[None]:
    # What any identity step can meet, in words safe to show; the code exchange catches its
    # own cases (refusals, HTTP errors, non-JSON answers) first.
    try:
        yield
    except ProviderFailure as error:
        raise IdentityError(f"{provider.title} could not complete the request: {error}.",
                            502) from None
    except requests.RequestException as error:
        raise IdentityError(f"{provider.title} could not be reached ({type(error).__name__}).",
                            502) from None
    except RuntimeError as error:
        # Authlib's word for metadata it needs and lacks, e.g. no "jwks_uri" to check an
        # id_token's signature against: the provider's configuration, not this answer.
        current_app.logger.warning("%s: %s", provider.key, error)
        raise IdentityError(f"{provider.title}'s metadata lacks what is needed to verify its "
                            "answer (no signing keys); check the providers file.", 502) from None
    except _UNVERIFIABLE as error:
        current_app.logger.warning("%s: the answer failed verification: %s",
                                   provider.key, type(error).__name__)
        raise IdentityError(f"{provider.title}'s answer could not be verified "
                            f"({type(error).__name__}).") from None


def _check_authorization_response(client: ProviderClient) -> str | None:
    """Provider errors, a missing state or code, and RFC 9207 ``iss``, before any exchange.

    Returns the provider's issuer identifier (None for plain OAuth 2.0 without one).
    """
    provider = client.provider
    error = request.args.get("error")
    if error:
        if not _started_in_this_browser(client):
            # Anyone can send a browser here with an "error_description" of their choosing
            # ("call this number..."): the provider's words are shown only for a flow this
            # browser started, where they really are the provider's answer.
            raise IdentityError(f"{provider.title} did not grant access. Start again.")
        raise IdentityError(f"{provider.title} did not grant access: "
                            f"{provider_error_text(error, request.args.get('error_description'))}")
    if not request.args.get("state"):
        raise IdentityError("The answer carries no state. Start again.")
    if not request.args.get("code"):
        raise IdentityError(f"{provider.title} sent no authorization code. Start again.")
    try:
        metadata = server_metadata(provider)
    except ProviderFailure:
        raise IdentityError(f"{provider.title} could not be reached.", 502) from None
    issuer = metadata.get("issuer")
    if provider.type == "oidc" and not issuer:
        raise IdentityError(f"{provider.title}'s discovery document names no issuer.", 502)
    sent = request.args.get("iss")
    # RFC 9207: a provider that names itself in the answer must be the one we asked, so an
    # answer from another provider (a mix-up attack) is refused before any code is exchanged.
    required = metadata.get("authorization_response_iss_parameter_supported")
    if (required or sent is not None) and sent != issuer:
        raise IdentityError(f"The answer did not come from {provider.title} (issuer mismatch).")
    return issuer


def _claims_options(client: ProviderClient, issuer: str | None) -> dict[str, dict[str, Any]]:
    # Authlib checks "aud" only when asked to (otherwise a token minted for another client
    # with our client id as "azp" would pass), and "iss" only when these options are omitted.
    # The nonce is always checked against the one kept with the flow's state.
    options: dict[str, dict[str, Any]] = {
        "aud": {"essential": True, "values": [client.client_id]},
    }
    if issuer:
        options["iss"] = {"essential": True, "values": [issuer]}
    return options


def _identity_claims(client: ProviderClient, token: dict[str, Any]) -> dict[str, Any]:
    """Validated id_token claims, completed (or, without an id_token, given) by userinfo.

    OpenID Connect Core 5.4: a provider may leave the claims asked for by scope (the
    e-mail address) out of the id_token and serve them from the userinfo endpoint only.
    """
    provider = client.provider
    claims = dict(token.get("userinfo") or {})
    asked_openid = "openid" in str(client.client_kwargs.get("scope", "")).split()
    if provider.type == "oidc" and asked_openid and not claims:
        raise IdentityError(f"{provider.title} sent no id_token, so the account cannot be "
                            "verified.")
    if claims and claims.get("email"):
        return claims
    if not server_metadata(provider).get("userinfo_endpoint"):
        return claims
    info = fetch_userinfo(provider, token["access_token"])
    if claims and str(info.get("sub")) != str(claims.get("sub")):
        raise IdentityError("The userinfo answer is about another account than the id_token.")
    return {**info, **claims} if claims else info


def provider_error_text(error: str | None, description: str | None) -> str:
    """An error code and description from the provider, shortened for a page."""
    text = error or "unknown error"
    if description:
        text += f" — {description}"
    return text[:300]


def _started_in_this_browser(client: ProviderClient) -> bool:
    """Whether this browser's session holds the marker of the answer's state.

    Authlib keeps one per flow in the Flask session, ``_state_<client name>_<state>`` with its
    expiry (``exp``); the flow's data itself is in ``oauth_states``, which reading would
    consume, so the marker is looked at directly.
    """
    state = request.args.get("state")
    marker = session.get(f"_state_{client.name}_{state}") if state else None
    if not isinstance(marker, dict):
        return False
    expires = marker.get("exp")
    return isinstance(expires, int | float) and expires > time.time()


def remembered(client: ProviderClient) -> dict[str, Any] | None:
    """What :func:`start` was asked to remember of the flow answered on this request.

    None unless this browser started the flow (it holds the state's marker) and the flow's
    state is still there. The state is not consumed: :func:`complete` does that.
    """
    state = request.args.get("state")
    if not state or not _started_in_this_browser(client):
        return None
    value = client.framework.cache.peek(f"_state_{client.name}_{state}")
    try:
        data = json.loads(value or "null") or {}
    except ValueError:
        return None
    kept = data.get("data", {}).get(_REMEMBERED) if isinstance(data, dict) else None
    return kept if isinstance(kept, dict) else None


def discard_state(client: ProviderClient) -> None:
    """Use up the state of the answer on this request, so it can never be used again."""
    state = request.args.get("state")
    if state:
        client.framework.clear_state_data(session, state)


def identity_of_token_answer(client: ProviderClient, token: dict[str, Any]) -> dict[str, Any]:
    """The identity step for a token answer that came without a browser redirect (the device
    grant): the id_token verified (signature against the provider's keys, ``iss``, ``aud``,
    expiry; no nonce was sent, so none is expected) and completed from userinfo, exactly as
    :func:`complete` does for a callback. Raises :class:`IdentityError`.
    """
    provider = client.provider
    with _failures_as_identity_errors(provider):
        issuer = server_metadata(provider).get("issuer")
        if provider.type == "oidc" and not issuer:
            raise IdentityError(f"{provider.title}'s discovery document names no issuer.", 502)
        answer = dict(token)
        if answer.get("id_token"):
            answer["userinfo"] = client.parse_id_token(
                answer, nonce=None, claims_options=_claims_options(client, issuer)
            )
        return _identity_claims(client, answer)
