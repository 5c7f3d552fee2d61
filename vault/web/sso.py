"""Staff single sign-on: OpenID Connect providers marked ``staff_login = true``.

The protocol is :mod:`vault.oauth.identity`'s, the same as Connect's (PKCE S256, state and
nonce kept server-side, id_token signature, issuer, audience and nonce checked, claims
completed from userinfo); :mod:`vault.services.accounts` decides whom the verified claims may
sign in as. The provider's tokens are used once and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort, current_app
from werkzeug.wrappers import Response

from vault.oauth import identity
from vault.oauth.clients import redirect_uri, staff_client
from vault.providers.registry import Provider

SsoError = identity.IdentityError


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
    callback = redirect_uri("auth.sso_callback", key=provider.key)
    return identity.start(staff_client(provider), callback)


def finish(provider: Provider) -> Mapping[str, Any]:
    """Complete the sign-in on the callback: the person's verified claims."""
    return identity.complete(staff_client(provider)).claims
