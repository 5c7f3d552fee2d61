"""Provider registry: the TOML providers file, ``${ENV}`` interpolation and presets.

Every error names the file, the provider and the key, so an operator can fix it at once.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vault.config import ConfigError
from vault.providers.limit_keys import check_limit_keys
from vault.providers.signing_keys import (
    JWT_BEARER,
    KEY_SETTINGS,
    PRIVATE_KEY_JWT,
    check_signing_keys,
)

OAUTH_TYPES = ("oidc", "oauth2")
SERVICE_ACCOUNT = "service_account"
PROVIDER_TYPES = (*OAUTH_TYPES, "api_key", SERVICE_ACCOUNT)
_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# What each preset fills in; the providers file may override any of it.
PRESETS: dict[str, dict[str, Any]] = {
    "google": {
        "title": "Google",
        "type": "oidc",
        "server_metadata_url": "https://accounts.google.com/.well-known/openid-configuration",
        "revocation_endpoint": "https://oauth2.googleapis.com/revoke",
        "authorize_params": {
            "access_type": "offline",
            "prompt": "consent",
            "include_granted_scopes": "true",
        },
        "scope": "openid email profile",
        "offline_access": True,
        # "A refresh token might stop working ... The refresh token has not been used for six
        # months" (180 days here, the safe side of six months); and an app whose consent screen
        # is External with publishing status "Testing" "is issued a refresh token expiring in
        # 7 days" (set publishing_status = "testing" for such an app).
        # https://developers.google.com/identity/protocols/oauth2#expiration
        "refresh_token_idle_days": 180,
        "publishing_status": "production",
        # Google answers with the long names of the OpenID shorthand scopes.
        "scope_aliases": {
            "email": "https://www.googleapis.com/auth/userinfo.email",
            "profile": "https://www.googleapis.com/auth/userinfo.profile",
        },
    },
    "microsoft": {
        "title": "Microsoft",
        "type": "oidc",
        "server_metadata_url": (
            "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
        ),
        "scope": "openid email profile offline_access",
        "offline_access": True,
        # "The default lifetime for the refresh tokens is 24 hours for single page apps and 90
        # days for all other scenarios. Refresh tokens replace themselves with a fresh token
        # upon every use": 90 days from the last refresh (AADSTS700082 after that).
        # https://learn.microsoft.com/en-us/entra/identity-platform/refresh-tokens
        "refresh_token_idle_days": 90,
    },
    "github": {
        "title": "GitHub",
        "type": "oauth2",
        "authorize_url": "https://github.com/login/oauth/authorize",
        "token_url": "https://github.com/login/oauth/access_token",
        "userinfo_url": "https://api.github.com/user",
        "scope": "read:user user:email",
        # GitHub Apps with expiring user tokens: "The user access token expires after eight
        # hours, and the refresh token expires after six months"; a refresh returns a new
        # refresh token, so the six months count from the last refresh (182 days; GitHub's
        # own refresh_token_expires_in wins when earlier). OAuth Apps get no refresh token.
        # https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/refreshing-user-access-tokens
        "refresh_token_idle_days": 182,
    },
    "slack": {
        "title": "Slack",
        "type": "oidc",
        "server_metadata_url": "https://slack.com/.well-known/openid-configuration",
        "scope": "openid email profile",
        # With token rotation "[the access token] expires every 12 hours" and each refresh
        # hands out a new refresh token; Slack states no lifetime for refresh tokens, so no
        # reconnect-by rule: a rotated connection renews itself until revoked.
        # https://docs.slack.dev/authentication/using-token-rotation
    },
    "oidc": {"type": "oidc", "scope": "openid email profile"},
    "oauth2": {"type": "oauth2"},
    "voicenter": {
        "title": "Voicenter",
        "type": "api_key",
        "fields": {"api_key": "API token"},
        # The Call Log API (read-only; the key goes as `code`, with a date range) is the
        # credential check: https://www.voicenter.com/API/Call-Log
        "check_url": "https://api.voicenter.com/hub/cdr/",
        "check_auth": "query:code",
    },
    "greeninvoice": {
        "title": "GreenInvoice (Morning)",
        "type": "api_key",
        "fields": {"api_key": "API key id", "api_secret": "API key secret"},
        "token_url": "https://api.greeninvoice.co.il/api/v1/account/token",
    },
    "whatsapp": {
        "title": "WhatsApp Business",
        "type": "api_key",
        "fields": {"api_key": "System-user access token"},
        # System-user tokens are made with or without an expiry (the form's expiry field);
        # a user token pasted here lasts "about 60 days"
        # (https://developers.facebook.com/docs/facebook-login/guides/access-tokens/get-long-lived).
        # The check asks the Graph API who the token is, then its expiry from debug_token
        # (https://developers.facebook.com/docs/graph-api/reference/debug_token).
        "expiry_field": True,
        "check_url": "https://graph.facebook.com/me",
        "check_auth": "bearer",
    },
    "api_key": {"type": "api_key", "fields": {"api_key": "API key"}},
    # A Google Cloud service account: an admin uploads its JSON key file, and access tokens
    # come from the JWT bearer grant signed with that key ("Using OAuth 2.0 for Server to
    # Server Applications"); the scopes are the providers file's, the token URL the key
    # file's token_uri when it names this one.
    # https://developers.google.com/identity/protocols/oauth2/service-account
    "google_service_account": {
        "title": "Google service account",
        "type": SERVICE_ACCOUNT,
        "token_url": "https://oauth2.googleapis.com/token",
    },
}

_ALLOWED_KEYS = {
    "preset", "title", "type", "client_id", "client_secret", "scope", "server_metadata_url",
    "authorize_url", "token_url", "userinfo_url", "revocation_endpoint", "authorize_params",
    "token_endpoint_auth_method", "offline_access", "fields", "expiry_field", "staff_login",
    "allowed_domains", "auto_create_role", "grant_type", "refresh_token_lifetime_days",
    "refresh_token_idle_days", "publishing_status", "client_secret_expires_at", "check_url",
    "check_auth",
    *KEY_SETTINGS,
}
# The device authorization grant (RFC 8628, vault/oauth/device.py).
_ALLOWED_KEYS |= {"flow", "device_authorization_url"}
_URL_KEYS = (
    "server_metadata_url", "authorize_url", "token_url", "userinfo_url", "revocation_endpoint",
    "check_url", "device_authorization_url",
)
_AUTH_METHODS = ("client_secret_basic", "client_secret_post", PRIVATE_KEY_JWT)
AUTHORIZATION_CODE, CLIENT_CREDENTIALS = "authorization_code", "client_credentials"
# How a person grants access at Connect: sent to the provider in this browser ("redirect"),
# or given a code to enter on any device (RFC 8628, "device").
REDIRECT_FLOW, DEVICE_FLOW = "redirect", "device"
FLOWS = (REDIRECT_FLOW, DEVICE_FLOW)
GRANT_TYPES = (AUTHORIZATION_CODE, CLIENT_CREDENTIALS, JWT_BEARER)


@dataclass(frozen=True)
class Provider:
    """One configured provider, presets applied and values checked."""

    key: str
    title: str
    type: str
    preset: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scope: str = ""
    server_metadata_url: str | None = None
    authorize_url: str | None = None
    token_url: str | None = None
    userinfo_url: str | None = None
    revocation_endpoint: str | None = None
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    token_endpoint_auth_method: str = "client_secret_basic"
    offline_access: bool = False
    fields: Mapping[str, str] = field(default_factory=dict)
    expiry_field: bool = False
    staff_login: bool = False
    allowed_domains: tuple[str, ...] = ()
    auto_create_role: str | None = None
    scope_aliases: Mapping[str, str] = field(default_factory=dict)
    # "client_credentials": machine-to-machine, the app's own client is the account; no
    # person consents in a browser, and a new token can always be had with the client secret.
    grant_type: str = AUTHORIZATION_CODE
    # Provider limits (vault/grants/limits.py): refresh tokens end this many days after
    # consent, or after this many days unused; Google's consent-screen publishing status;
    # when the app's own client secret expires.
    refresh_token_lifetime_days: int | None = None
    refresh_token_idle_days: int | None = None
    publishing_status: str | None = None
    client_secret_expires_at: date | None = None
    # The credential check of pasted keys (vault/services/checks.py): a read-only URL and
    # how the key is sent: "bearer", "header:NAME" or "query:NAME".
    check_url: str | None = None
    check_auth: str = "bearer"
    # The device authorization grant: Connect shows a code to enter at the provider, and the
    # vault polls its token endpoint (vault/services/device_grants.py). The endpoint comes
    # from discovery (``device_authorization_endpoint``) unless set here.
    flow: str = REDIRECT_FLOW
    device_authorization_url: str | None = None
    # private_key_jwt client authentication (vault/providers/signing_keys.py): the client's
    # PEM private key (a *_file setting is read into it at start-up) and its key id.
    client_private_key: str | None = field(default=None, repr=False)
    client_key_id: str | None = None
    # grant_type = "jwt_bearer" (RFC 7523 section 2.1): the assertion's key and claims.
    assertion_private_key: str | None = field(default=None, repr=False)
    assertion_key_id: str | None = None
    assertion_issuer: str | None = None
    assertion_subject: str | None = None
    assertion_audience: str | None = None

    @property
    def is_oauth(self) -> bool:
        return self.type in OAUTH_TYPES

    @property
    def uses_client_credentials(self) -> bool:
        """Machine to machine: the app's own credentials (its client secret, or an assertion
        signed with its key) get every token; no person consents in a browser."""
        return self.grant_type in (CLIENT_CREDENTIALS, JWT_BEARER)

    @property
    def uses_jwt_bearer(self) -> bool:
        """Tokens come from the JWT bearer grant: an ``oauth2`` provider with
        ``grant_type = "jwt_bearer"``, or a service account (its key file is uploaded)."""
        return self.grant_type == JWT_BEARER or self.type == SERVICE_ACCOUNT

    @property
    def uses_device_flow(self) -> bool:
        return self.flow == DEVICE_FLOW


class ProviderRegistry:
    """The configured providers by key, in file order."""

    def __init__(self, providers: list[Provider] | None = None, source: str | None = None):
        self._providers = {provider.key: provider for provider in providers or []}
        self.source = source

    def __iter__(self):
        return iter(self._providers.values())

    def __len__(self) -> int:
        return len(self._providers)

    def __contains__(self, key: object) -> bool:
        return key in self._providers

    def get(self, key: str) -> Provider | None:
        """The provider with this key, or None."""
        return self._providers.get(key)

    def client_credentials_keys(self) -> list[str]:
        """Keys of the providers whose tokens come from the client-credentials grant."""
        return [p.key for p in self._providers.values() if p.uses_client_credentials]

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, *, required: bool, environ: Mapping[str, str] | None = None
    ) -> ProviderRegistry:
        """Load and check a providers file; a missing optional file means no providers."""
        path = Path(path)
        if not path.exists() and not required:
            return cls([], source=str(path))
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(
                f"providers file {path} cannot be read ({error.strerror}); "
                "set VAULT_PROVIDERS_FILE to a readable TOML file"
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"providers file {path} is not valid TOML: {error}") from None
        environ = os.environ if environ is None else environ
        providers = [
            _build_provider(path, key, table, environ) for key, table in document.items()
        ]
        return cls(providers, source=str(path))


def _build_provider(path: Path, key: str, table: Any, environ: Mapping[str, str]) -> Provider:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"providers file {path}: [{key}] {message}")

    if not isinstance(table, dict):
        raise fail("must be a table, e.g. [" + key + "] with preset = \"google\"")
    if not _KEY_PATTERN.match(key):
        raise fail("provider key must be lower-case letters, digits, '-' or '_'")
    unknown = sorted(set(table) - _ALLOWED_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_ALLOWED_KEYS))}")
    values = _interpolate(table, environ, fail)
    preset_name = values.get("preset")
    if preset_name is not None and preset_name not in PRESETS:
        raise fail(f"preset: unknown preset {preset_name!r}; known: {', '.join(PRESETS)}")
    merged = {**PRESETS.get(preset_name or "", {}), **values}
    merged.setdefault("title", key.replace("_", " ").title())
    provider_type = merged.get("type")
    if provider_type not in PROVIDER_TYPES:
        raise fail(f"type: must be one of {', '.join(PROVIDER_TYPES)} (or set a preset)")
    grant_type = merged.get("grant_type", AUTHORIZATION_CODE)
    if grant_type not in GRANT_TYPES:
        raise fail(f"grant_type: must be one of {', '.join(GRANT_TYPES)}")
    if grant_type == CLIENT_CREDENTIALS and provider_type not in OAUTH_TYPES:
        raise fail("grant_type: client_credentials is for OAuth providers (type oauth2 or oidc)")
    _check_flow(merged, provider_type, grant_type, fail)
    if provider_type in OAUTH_TYPES:
        # A private key, or the jwt_bearer grant's assertion, stands in for the secret.
        needed = ("client_id",) if grant_type == JWT_BEARER else ("client_id", "client_secret")
        if merged.get("token_endpoint_auth_method") == PRIVATE_KEY_JWT:
            needed = ("client_id",)
        for required in needed:
            if not merged.get(required):
                raise fail(f"{required}: missing; OAuth providers need a client id and secret")
        if provider_type == "oidc" and not merged.get("server_metadata_url"):
            raise fail("server_metadata_url: missing; OIDC providers need their discovery URL")
        if provider_type == "oauth2":
            # No browser ever visits a client-credentials provider: its token URL is enough.
            needed = ("token_url",) if grant_type != AUTHORIZATION_CODE else (
                "authorize_url", "token_url"
            )
            if merged.get("flow") == DEVICE_FLOW:
                needed = ("token_url",)  # the person enters a code: no authorization URL
            for required in needed:
                if not merged.get(required):
                    raise fail(f"{required}: missing; plain OAuth 2.0 providers need it")
    for url_key in _URL_KEYS:
        if merged.get(url_key) is not None and not _is_url(merged[url_key]):
            raise fail(f"{url_key}: {merged[url_key]!r} is not an http(s) URL")
    method = merged.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in _AUTH_METHODS:
        raise fail(f"token_endpoint_auth_method: must be one of {', '.join(_AUTH_METHODS)}")
    if merged.get("auto_create_role") not in (None, "admin", "viewer"):
        raise fail("auto_create_role: must be 'admin' or 'viewer'")
    merged["allowed_domains"] = tuple(d.lower() for d in merged.get("allowed_domains", ()))
    if merged.get("staff_login") and (provider_type != "oidc" or grant_type == CLIENT_CREDENTIALS):
        raise fail("staff_login: only OpenID Connect providers can sign staff in")
    if merged.get("staff_login") and not merged["allowed_domains"]:
        raise fail("allowed_domains: staff_login needs at least one allowed e-mail domain")
    if provider_type == SERVICE_ACCOUNT:
        _check_service_account(merged, fail)
    check_limit_keys(merged, provider_type, OAUTH_TYPES, fail)
    check_signing_keys(merged, provider_type, fail)
    return Provider(key=key, **merged)


def _check_flow(merged: dict[str, Any], provider_type: str, grant_type: str, fail) -> None:
    """``flow = "device"``: an OAuth provider a person consents to with a code (RFC 8628).

    Its device authorization endpoint is explicit or, for OpenID Connect, read from discovery
    at Connect (checked there: no network at start-up).
    """
    flow = merged.get("flow", REDIRECT_FLOW)
    if flow not in FLOWS:
        raise fail(f"flow: must be one of {', '.join(FLOWS)}")
    if flow != DEVICE_FLOW:
        if merged.get("device_authorization_url"):
            raise fail('device_authorization_url: only for flow = "device"')
        return
    if provider_type not in OAUTH_TYPES or grant_type != AUTHORIZATION_CODE:
        raise fail('flow: "device" is for OAuth providers a person consents to '
                   "(type oauth2 or oidc, no client_credentials grant)")
    if merged.get("staff_login"):
        raise fail('staff_login: staff sign in through the browser flow, not flow = "device"')
    if provider_type == "oauth2" and not merged.get("device_authorization_url"):
        raise fail("device_authorization_url: missing; plain OAuth 2.0 providers with "
                   'flow = "device" need it (OIDC ones may read it from discovery)')
def _check_service_account(merged: dict[str, Any], fail) -> None:
    """A service account: its token URL and scopes; the key itself is uploaded, not here."""
    if not merged.get("token_url"):
        raise fail("token_url: missing; a service account needs the token URL it signs for")
    if not str(merged.get("scope") or "").split():
        raise fail("scope: missing; list the scopes the service account may be given")
    for name in ("client_id", "client_secret", "authorize_url", "server_metadata_url",
                 "staff_login", "grant_type", "fields"):
        if merged.get(name):
            raise fail(f"{name}: not used by a service account (its key file is uploaded)")


def _interpolate(value: Any, environ: Mapping[str, str], fail) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in environ:
                raise fail(f"refers to ${{{name}}}, but environment variable {name} is not set")
            return environ[name]

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, environ, fail) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, environ, fail) for v in value]
    return value


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
