"""The providers file's provider-limit and credential-check keys, checked.

``refresh_token_lifetime_days``, ``refresh_token_idle_days``, ``publishing_status`` (Google),
``client_secret_expires_at``, ``check_url`` and ``check_auth``; what they mean is
:mod:`vault.grants.limits`' and :mod:`vault.services.checks`' business. Every error names the
key, through the registry's ``fail`` (which adds the file and the provider).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any

PUBLISHING_STATUSES = ("production", "testing")
# The longest rule a providers file may state (ten years); beyond it a rule means nothing.
LONGEST_RULE_DAYS = 3650
_CHECK_AUTH = re.compile(r"^(bearer|(header|query):[A-Za-z0-9_-]{1,64})$")


def check_limit_keys(
    merged: dict[str, Any], provider_type: str, oauth_types: tuple[str, ...], fail: Callable
) -> None:
    """Validate (and normalise in place) the provider-limit and credential-check keys."""
    for name in ("refresh_token_lifetime_days", "refresh_token_idle_days"):
        value = merged.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not (
            0 < value <= LONGEST_RULE_DAYS
        ):
            raise fail(f"{name}: must be a whole number of days from 1 to {LONGEST_RULE_DAYS}")
        if provider_type not in oauth_types:
            raise fail(f"{name}: only OAuth providers (type oauth2 or oidc) have refresh tokens")
    status = merged.get("publishing_status")
    if status is not None:
        if status not in PUBLISHING_STATUSES:
            raise fail(f"publishing_status: must be one of {', '.join(PUBLISHING_STATUSES)}")
        if merged.get("preset") != "google":
            raise fail("publishing_status: only Google apps have one (preset = \"google\")")
    expires = merged.get("client_secret_expires_at")
    if expires is not None:
        if isinstance(expires, str):
            try:
                expires = date.fromisoformat(expires)
            except ValueError:
                raise fail("client_secret_expires_at: must be a date, \"YYYY-MM-DD\"") from None
        if not isinstance(expires, date) or hasattr(expires, "hour"):
            raise fail("client_secret_expires_at: must be a date, \"YYYY-MM-DD\"")
        if provider_type not in oauth_types:
            raise fail("client_secret_expires_at: only OAuth providers have a client secret")
        merged["client_secret_expires_at"] = expires
    check_auth = merged.get("check_auth", "bearer")
    if not isinstance(check_auth, str) or not _CHECK_AUTH.match(check_auth):
        raise fail('check_auth: must be "bearer", "header:NAME" or "query:NAME"')
    if "check_auth" in merged and not merged.get("check_url"):
        raise fail("check_auth: says how to send the key to check_url, which is not set")
    if merged.get("check_url") is not None and provider_type != "api_key":
        raise fail("check_url: only API-key providers are checked by URL (OAuth ones use their "
                   "userinfo endpoint)")
