"""Token lifetimes as providers state them: ``expires_in`` and its kin, read here only.

``expires_in`` is "the lifetime in seconds of the access token" (RFC 6749 section 5.1).
Providers send numbers, numeric strings, zero, or nothing. A positive number (or numeric
string) counts from when the answer arrived. Zero, a negative or absurd number, or
anything else is not a lifetime: the provider did not say, so the expiry is unknown and the
token is handed out as it is, rather than treated as expired and refreshed on every request.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

# Beyond this a stated lifetime means "does not expire" in practice (and would overflow).
LONGEST_LIFETIME_SECONDS = 100 * 365 * 86400


def lifetime_seconds(value: object) -> int | None:
    """Whole seconds of a stated lifetime, or None when the value is not a usable one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # "soon"; a 400-digit integer
        return None
    if not math.isfinite(number) or number <= 0 or number > LONGEST_LIFETIME_SECONDS:
        return None
    return int(number)


def lifetime_end(now: datetime, value: object) -> datetime | None:
    """When a lifetime stated as ``value`` ends, counted from ``now``; None: unknown."""
    seconds = lifetime_seconds(value)
    return None if seconds is None else now + timedelta(seconds=seconds)
