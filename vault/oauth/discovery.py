"""Provider endpoints: explicit URLs from the providers file or OIDC discovery, cached.

Discovery documents are fetched with the provider timeout (``VAULT_PROVIDER_TIMEOUT_SECONDS``)
and kept for an hour per process; a failed fetch raises :class:`DiscoveryError` (a network
problem, never a credential problem).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from flask import current_app

from vault.oauth.errors import ProviderFailure
from vault.providers.registry import Provider

CACHE_SECONDS = 3600

_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


class DiscoveryError(ProviderFailure):
    """The provider's metadata could not be fetched or is unusable."""


def server_metadata(provider: Provider) -> dict[str, Any]:
    """The provider's endpoints: its discovery document overlaid with explicit settings."""
    metadata: dict[str, Any] = {}
    if provider.server_metadata_url:
        metadata.update(_discover(provider.server_metadata_url))
    explicit = {
        "authorization_endpoint": provider.authorize_url,
        "token_endpoint": provider.token_url,
        "userinfo_endpoint": provider.userinfo_url,
        "revocation_endpoint": provider.revocation_endpoint,
        "device_authorization_endpoint": provider.device_authorization_url,
    }
    metadata.update({name: url for name, url in explicit.items() if url})
    return metadata


def endpoint(provider: Provider, name: str) -> str | None:
    """One endpoint of the provider's metadata (``token_endpoint``, ...), or None."""
    return server_metadata(provider).get(name)


def token_endpoint(provider: Provider) -> str:
    """The URL to exchange codes and refresh tokens at."""
    url = endpoint(provider, "token_endpoint")
    if not url:
        raise DiscoveryError(f"provider {provider.key} has no token endpoint")
    return url


def _discover(url: str) -> dict[str, Any]:
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(url)
    if cached is not None and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    try:
        response = requests.get(url, timeout=current_app.config["VAULT_PROVIDER_TIMEOUT_SECONDS"])
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as error:
        raise DiscoveryError(
            f"discovery document {url} could not be loaded: {type(error).__name__}"
        ) from None
    if not isinstance(document, dict):
        raise DiscoveryError(f"discovery document {url} is not a JSON object")
    with _cache_lock:
        _cache[url] = (now, document)
    return document


def clear_cache() -> None:
    """Forget every cached discovery document (tests, or after a provider changes)."""
    with _cache_lock:
        _cache.clear()
