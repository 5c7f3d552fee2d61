"""The Jinja filters and globals every page uses, registered by :func:`init_filters`."""

from __future__ import annotations

from datetime import datetime

from flask import Flask

from vault.models import utcnow
from vault.queries.connections import Health
from vault.queries.keyset import AtLeast, AtMost


def init_filters(app: Flask) -> None:
    """Make the filters and globals below available to every template of ``app``."""
    app.add_template_filter(format_utc, "utc")
    app.add_template_filter(format_relative, "relative")
    app.add_template_filter(format_thousands, "thousands")
    app.add_template_global(health_label, "health_label")


def format_utc(moment: datetime | None) -> str:
    """``2025-01-31 14:05 UTC``."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def format_relative(moment: datetime | None, now: datetime | None = None) -> str:
    """``in 42 min``, ``3 h ago``, ``in 2 days``: rounded down, as people say it."""
    if moment is None:
        return ""
    seconds = (moment - (now or utcnow())).total_seconds()
    size = abs(seconds)
    if size < 60:
        return "in under a minute" if seconds >= 0 else "just now"
    if size < 3600:
        amount = f"{int(size // 60)} min"
    elif size < 48 * 3600:
        amount = f"{int(size // 3600)} h"
    else:
        amount = f"{int(size // 86400)} days"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def format_thousands(number: int) -> str:
    """``10,000``; a lower bound ``1,000+``, an upper bound ``≤ 1,000``."""
    if isinstance(number, AtLeast):
        return f"{number:,}+"
    if isinstance(number, AtMost):
        return f"≤ {number:,}"
    return f"{number:,}"


def health_label(value: str) -> str:
    """The words for a :class:`~vault.queries.connections.Health` value: ``Needs reconnect``."""
    return Health(value).label
