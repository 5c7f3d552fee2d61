"""Scrubbing secrets out of text that goes to logs, error columns and pages."""

from __future__ import annotations

import logging
import re

SENSITIVE_NAMES = (
    "code",
    "code_verifier",
    "client_secret",
    "refresh_token",
    "access_token",
    "id_token",
    "password",
    "api_key",
    "api_secret",
    "secret",
    "token",
    "assertion",
)
_NAMES = "|".join(sorted(SENSITIVE_NAMES, key=len, reverse=True))
# name=value, name: value, "name": "value", 'name': 'value' (query strings, forms, JSON, reprs)
_NAMED_VALUE = re.compile(
    rf"""(?P<name>["']?\b(?:{_NAMES})\b["']?\s*[:=]\s*)(?P<quote>["']?)(?P<value>[^"'&\s,;}}\]]+)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_GOOGLE_TOKEN = re.compile(r"\b(ya29\.|1//)[A-Za-z0-9_\-.]{10,}")
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Replace anything shaped like a credential in ``text`` with ``[REDACTED]``."""
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _GOOGLE_TOKEN.sub(REDACTED, text)
    return _NAMED_VALUE.sub(
        lambda m: f"{m.group('name')}{m.group('quote')}{REDACTED}", text
    )


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are formatted later from exc_info; keep their text scrubbed too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
