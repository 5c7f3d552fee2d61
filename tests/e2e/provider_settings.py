"""How the end-to-end tests' OpenID provider behaves, one value per test or module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderSettings:
    """How the provider behaves; ``server.mjs`` documents each setting.

    The defaults are the provider the plain Connect test meets: one-hour access tokens and
    node-oidc-provider's own policies (refresh tokens rotated only late in their lifetime;
    ``conformIdTokenClaims``: the id_token holds only ``sub`` when an access token comes
    with it). A test module changes them by overriding the ``oidc_provider_settings``
    fixture, or a test by parametrizing it.
    """

    access_token_ttl: int = 3600
    rotate_refresh_token: bool | None = None  # None: the library's default policy
    conform_id_token_claims: bool = True
    redirect_paths: tuple[str, ...] = ("/connect/idp/callback",)

    def environment(self, app_url: str) -> dict[str, str]:
        settings = {
            "REDIRECT_URIS": " ".join(f"{app_url}{path}" for path in self.redirect_paths),
            "ACCESS_TOKEN_TTL": str(self.access_token_ttl),
            "CONFORM_ID_TOKEN_CLAIMS": str(self.conform_id_token_claims).lower(),
        }
        if self.rotate_refresh_token is not None:
            settings["ROTATE_REFRESH_TOKEN"] = str(self.rotate_refresh_token).lower()
        return settings
