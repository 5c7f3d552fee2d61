"""Authlib OAuth clients, one registry per app, with flow state kept server-side.

Authlib keeps each flow's PKCE verifier, nonce and redirect URI in a "cache"; ours is the
``oauth_states`` table (encrypted, shared by every instance), so the session cookie only
holds the state's expiry marker, never the verifier.
"""

from __future__ import annotations

from datetime import timedelta

from authlib.integrations.flask_client import OAuth
from flask import Flask, current_app
from sqlalchemy import delete, insert

from vault.extensions import db
from vault.models import OAuthState, utcnow
from vault.providers.registry import Provider
from vault.tokens.store import token_vault

PROVIDER_TIMEOUT_SECONDS = 10
_EXTENSION = "vault_oauth"


class FlowStateStore:
    """Authlib's cache interface (get/set/delete) over the ``oauth_states`` table.

    Reading a state consumes it (``DELETE ... RETURNING``), so even two simultaneous
    callbacks carrying the same state cannot both use it. Each call runs in its own short
    transaction, independent of the request's session, so a consumed state stays consumed
    even when the rest of the callback fails and rolls back.
    """

    def __init__(self, app: Flask):
        self.app = app

    @staticmethod
    def _aad(key: str) -> bytes:
        return f"oauth-state:{key}".encode()

    def get(self, key: str) -> str | None:
        now = utcnow()
        statement = (
            delete(OAuthState).where(OAuthState.key == key).returning(
                OAuthState.ciphertext, OAuthState.expires_at
            )
        )
        with db.engine.begin() as connection:
            row = connection.execute(statement).first()
        if row is None or row.expires_at <= now:
            return None
        return token_vault.cipher.decrypt(row.ciphertext, aad=self._aad(key))

    def set(self, key: str, value: str, expires_in: int) -> None:
        now = utcnow()
        with db.engine.begin() as connection:
            connection.execute(delete(OAuthState).where(OAuthState.expires_at <= now))
            connection.execute(
                insert(OAuthState).values(
                    key=key,
                    ciphertext=token_vault.cipher.encrypt(value, aad=self._aad(key)),
                    expires_at=now + timedelta(seconds=expires_in),
                )
            )

    def delete(self, key: str) -> None:
        with db.engine.begin() as connection:
            connection.execute(delete(OAuthState).where(OAuthState.key == key))


def init_oauth(app: Flask) -> None:
    """Register an Authlib client for every OAuth provider of this app (no network here)."""
    oauth = OAuth(cache=FlowStateStore(app))
    oauth.init_app(app)
    timeout = app.config.get("VAULT_PROVIDER_TIMEOUT_SECONDS", PROVIDER_TIMEOUT_SECONDS)
    for provider in app.extensions["providers"]:
        if provider.is_oauth:
            oauth.register(name=provider.key, **client_settings(provider, timeout))
    app.extensions[_EXTENSION] = oauth


def client_settings(provider: Provider, timeout: float) -> dict:
    """Authlib ``register`` arguments for a provider: PKCE S256, its auth method, a timeout."""
    settings = {
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "server_metadata_url": provider.server_metadata_url,
        "authorize_url": provider.authorize_url,
        "access_token_url": provider.token_url,
        "userinfo_endpoint": provider.userinfo_url,
        "authorize_params": dict(provider.authorize_params) or None,
        "client_kwargs": {
            "scope": provider.scope,
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": provider.token_endpoint_auth_method,
            "default_timeout": timeout,
        },
    }
    return {name: value for name, value in settings.items() if value is not None}


def oauth_client(provider_key: str):
    """The current app's Authlib client for a provider."""
    return current_app.extensions[_EXTENSION].create_client(provider_key)
