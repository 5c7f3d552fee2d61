"""The Authlib clients of the connect flow and of staff sign-in: one registry per app.

Built once at start-up (no network here): for every OAuth provider a client asking for the
provider's scopes, and for every staff sign-in provider a second client asking only who the
person is. Each client reads the provider's endpoints through :mod:`vault.oauth.discovery`
and talks through :class:`~vault.oauth.session.ProviderSession`, which never refreshes a
token on its own. The one redirect-URI builder is here too.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_client import FlaskOAuth2App, OAuth
from flask import Flask, abort, current_app, url_for

from vault.oauth import assertions
from vault.oauth.discovery import server_metadata
from vault.oauth.flow_state import FlowStateStore
from vault.oauth.session import ProviderSession
from vault.providers.registry import Provider
from vault.providers.signing_keys import PRIVATE_KEY_JWT

_EXTENSION = "vault_oauth"
# Only who the person is: staff sign-in never asks for access to anything.
STAFF_SCOPE = "openid email profile"
_STAFF_PREFIX = "staff_"


class ProviderClient(FlaskOAuth2App):
    """An Authlib Flask client bound to one configured provider."""

    client_cls = ProviderSession
    provider: Provider

    def load_server_metadata(self) -> dict[str, Any]:
        """The provider's endpoints from :mod:`vault.oauth.discovery` (one cache for all)."""
        self.server_metadata.update(server_metadata(self.provider))
        return self.server_metadata


class _Registry(OAuth):
    oauth2_client_cls = ProviderClient


def init_oauth(app: Flask) -> None:
    """Register the connect and staff sign-in clients of every OAuth provider of ``app``."""
    registry = _Registry(cache=FlowStateStore(app))
    registry.init_app(app)
    timeout = app.config["VAULT_PROVIDER_TIMEOUT_SECONDS"]
    for provider in app.extensions["providers"]:
        if not provider.is_oauth or provider.uses_client_credentials:
            continue  # no browser ever visits a client-credentials provider
        _register(registry, provider.key, provider, _settings(provider, timeout))
        if provider.staff_login:
            settings = _settings(provider, timeout)
            settings.pop("authorize_params", None)  # no offline access, no consent prompt
            settings["client_kwargs"]["scope"] = STAFF_SCOPE
            _register(registry, _STAFF_PREFIX + provider.key, provider, settings)
    app.extensions[_EXTENSION] = registry


def _register(registry: OAuth, name: str, provider: Provider, settings: dict[str, Any]) -> None:
    registry.register(name=name, **settings)
    client = registry.create_client(name)
    client.provider = provider


def _settings(provider: Provider, timeout: float) -> dict[str, Any]:
    """Authlib ``register`` arguments for a provider: PKCE S256, its auth method, a timeout."""
    private_key_jwt = provider.token_endpoint_auth_method == PRIVATE_KEY_JWT
    settings = {
        "client_id": provider.client_id,
        # With private_key_jwt the key stands where Authlib expects the secret.
        "client_secret": (
            assertions.client_key(provider) if private_key_jwt else provider.client_secret
        ),
        "client_auth_methods": [assertions.private_key_jwt(provider)] if private_key_jwt else None,
        "authorize_params": dict(provider.authorize_params) or None,
        "client_kwargs": {
            "scope": provider.scope,
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": provider.token_endpoint_auth_method,
            "default_timeout": timeout,
        },
    }
    return {name: value for name, value in settings.items() if value is not None}


def connect_client(provider: Provider) -> ProviderClient:
    """The client that connects accounts of ``provider`` (404 for providers without one)."""
    return _client(provider.key)


def staff_client(provider: Provider) -> ProviderClient:
    """The client that signs staff in with ``provider`` (404 unless it has ``staff_login``)."""
    return _client(_STAFF_PREFIX + provider.key)


def _client(name: str) -> ProviderClient:
    client = current_app.extensions[_EXTENSION].create_client(name)
    if client is None:
        abort(404)
    return client


def redirect_uri(endpoint: str, **values: Any) -> str:
    """The absolute URL of a callback, exactly as it must be registered at the provider.

    ``VAULT_BASE_URL``, when set, pins scheme, host and port; otherwise they come from the
    request (behind trusted proxies, from their headers).
    """
    base = current_app.config.get("VAULT_BASE_URL")
    if base:
        return base.rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, **values, _external=True)
