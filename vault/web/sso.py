"""Staff single sign-on: OpenID Connect providers marked ``staff_login = true``.

Authlib does the protocol (PKCE S256, state and nonce kept server-side until the callback, ID
token signature, issuer, audience and nonce checked); :mod:`vault.services.accounts` decides whom the
verified claims may sign in as. The provider's tokens are used once and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import abort, current_app, request, url_for
from joserfc.errors import JoseError
from werkzeug.wrappers import Response

from vault.oauth.clients import PROVIDER_TIMEOUT_SECONDS, FlowStateStore, client_settings
from vault.providers.registry import Provider

# Only who the person is: staff sign-in never asks for access to anything.
STAFF_SCOPE = "openid email profile"
_REGISTRY = "vault_staff_oauth"


class SsoError(Exception):
    """The provider did not complete the sign-in; the message is safe to show and store."""


def staff_providers() -> list[Provider]:
    """The providers staff may sign in with, in file order."""
    return [p for p in current_app.extensions["providers"] if p.staff_login]


def staff_provider(key: str) -> Provider:
    """The staff sign-in provider ``key``, or a 404."""
    provider = current_app.extensions["providers"].get(key)
    if provider is None or not provider.staff_login:
        abort(404)
    return provider


def begin(provider: Provider) -> Response:
    """Redirect the browser to the provider's sign-in page."""
    # VAULT_BASE_URL, when set, pins the redirect URI to the one registered at the provider.
    base = current_app.config.get("VAULT_BASE_URL")
    path = url_for("auth.sso_callback", key=provider.key)
    redirect_uri = base.rstrip("/") + path if base else url_for(
        "auth.sso_callback", key=provider.key, _external=True
    )
    try:
        return _client(provider).authorize_redirect(redirect_uri)
    except (requests.RequestException, ValueError, RuntimeError) as error:
        # Its discovery document could not be fetched or lacks the authorization endpoint.
        current_app.logger.warning(
            "staff sign-in with %s cannot start: %s", provider.key, type(error).__name__
        )
        raise SsoError(f"{provider.title} cannot be reached; try again in a moment") from None


def finish(provider: Provider) -> Mapping[str, Any]:
    """Exchange the callback's code and return the verified ID token claims."""
    client = _client(provider)
    try:
        issuer = _issuer(client)
        _check_issuer_parameter(client, issuer)
        token = client.authorize_access_token(claims_options=_claims_options(client, issuer))
    except (AuthlibBaseError, JoseError, requests.RequestException) as error:
        current_app.logger.warning(
            "staff sign-in with %s failed: %s", provider.key, type(error).__name__
        )
        raise SsoError(f"{provider.title} did not complete the sign-in") from None
    claims = token.get("userinfo")
    if not claims:
        raise SsoError(f"{provider.title} sent no ID token")
    return claims


def _issuer(client) -> str:
    issuer = client.load_server_metadata().get("issuer")
    if not issuer:
        raise SsoError("the provider's discovery document names no issuer")
    return issuer


def _claims_options(client, issuer: str) -> dict[str, dict[str, Any]]:
    # Authlib checks "aud" only when asked to (otherwise a token minted for another client
    # with our client id as "azp" would pass) and "iss" only when these options are omitted.
    return {
        "iss": {"essential": True, "values": [issuer]},
        "aud": {"essential": True, "values": [client.client_id]},
    }


def _check_issuer_parameter(client, issuer: str) -> None:
    # RFC 9207: a provider that names itself in the response must be the one we asked, so an
    # answer from another provider (a mix-up attack) is refused before any code is exchanged.
    sent = request.args.get("iss")
    required = client.load_server_metadata().get("authorization_response_iss_parameter_supported")
    if (sent is None and required) or (sent is not None and sent != issuer):
        raise SsoError("the answer did not come from the expected provider")


def _client(provider: Provider):
    # Staff clients have a registry of their own, apart from the connect flow's clients of the
    # same providers: they ask only who the person is (no offline access, no consent prompt).
    app = current_app._get_current_object()
    registry = app.extensions.get(_REGISTRY)
    if registry is None:
        registry = OAuth(cache=FlowStateStore(app))
        registry.init_app(app)
        app.extensions[_REGISTRY] = registry
    name = f"staff_{provider.key}"
    if registry.create_client(name) is None:
        timeout = app.config.get("VAULT_PROVIDER_TIMEOUT_SECONDS", PROVIDER_TIMEOUT_SECONDS)
        settings = client_settings(provider, timeout)
        settings.pop("authorize_params", None)
        settings["client_kwargs"]["scope"] = STAFF_SCOPE
        registry.register(name=name, **settings)
    return registry.create_client(name)
