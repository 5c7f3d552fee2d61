"""Scrubbing secrets out of text that goes to logs, error columns and pages.

:func:`redact` replaces anything shaped like a credential with ``[REDACTED]``.
:func:`install_log_redaction` makes every log record of the process pass through it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Names whose value is always a secret, matched as a whole word ("code=..." but not
# "status_code=...", which would hide status codes from every log).
EXACT_NAMES = ("code", "code_verifier")
# Names that make anything ending in them a secret too: "refresh_token", "csrf_token",
# "id_token", "new_password", "X-Api-Key", "client_assertion", "__Host-session".
SUFFIX_NAMES = (
    "token",
    "secret",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "assertion",
    "session",
    "cookie",
)
SENSITIVE_NAMES = EXACT_NAMES + SUFFIX_NAMES


def _name_pattern(names: tuple[str, ...]) -> str:
    # "api_key" also matches "api-key" (HTTP headers spell names with dashes).
    return "|".join(
        name.replace("_", "[-_]") for name in sorted(names, key=len, reverse=True)
    )


# A whole name: anything ending in a suffix name, or exactly one of the exact names.
_NAME = (
    rf"(?<![\w-])(?:[\w-]*?(?:{_name_pattern(SUFFIX_NAMES)})|{_name_pattern(EXACT_NAMES)})\b"
)
# name=value, name: value, "name": "value", 'name': 'value' (query strings, forms, JSON, reprs,
# header lines). A quoted value runs to its closing quote, so one with blanks is hidden whole.
_NAMED_VALUE = re.compile(
    rf"""(?P<name>["']?{_NAME}["']?\s*[:=]\s*)
         (?!["']?\[REDACTED\])                                 # already hidden: leave it
         (?:(?P<quote>["'])(?:\\.|(?!(?P=quote)).)*(?P=quote)   # "quoted", to its closing quote
           |["']?[^"'&\s,;}}\])]+)                         # bare (or never closed)""",
    re.IGNORECASE | re.VERBOSE,
)
# An Authorization header's whole value, whatever its scheme ("Bearer x", "Token x", "x").
_AUTHORIZATION = re.compile(
    r"""(?P<name>["']?\b(?:proxy-)?authorization["']?\s*[:=]\s*)(?P<quote>["']?)[^"'\r\n,}]+""",
    re.IGNORECASE,
)
# Real credentials are long and end at their padding; that spares "Bearer realm=..." and
# "token_type=Bearer expires_in=3599".
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9\-._~+/]{8,}=*(?![\w=])", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_GOOGLE_TOKEN = re.compile(r"\b(ya29\.|1//)[A-Za-z0-9_\-.]{10,}")
# A reconnect or connect link's token, the credential in its path (access-log lines, "GET
# /reconnect/<token>"): vault.services.reconnect_links.LINK_PATH, which cannot be imported here.
_LINK_TOKEN = re.compile(r"(/reconnect/)[A-Za-z0-9_-]{8,}")
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Replace anything shaped like a credential in ``text`` with ``[REDACTED]``."""
    # Named values first: a later pattern would otherwise hide part of a value and leave the
    # rest ("session=[REDACTED].sig") for the name to half-match.
    text = _AUTHORIZATION.sub(lambda m: f"{m['name']}{m['quote']}{REDACTED}", text)
    text = _NAMED_VALUE.sub(
        lambda m: f"{m['name']}{m['quote'] or ''}{REDACTED}{m['quote'] or ''}", text
    )
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _LINK_TOKEN.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _GOOGLE_TOKEN.sub(REDACTED, text)


def redact_known(text: str, secrets: Iterable[str | None]) -> str:
    """Remove the given secrets from ``text`` (e.g. those just sent to a provider that may
    echo them), then anything else shaped like a credential."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return redact(text)


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a log record in place: its message, traceback and stack; returns it."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format must not make logging print raw args
        record.msg = f"{redact(str(record.msg))} (arguments hidden: they did not fit the format)"
        record.args = None
    else:
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters print exc_text when it is set; the raw exception is dropped so that no
        # handler can format it again unscrubbed.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


class _RedactingRecordFactory:
    """Wraps the process's log record factory so every record is scrubbed at birth."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def __call__(self, *args, **kwargs) -> logging.LogRecord:
        return scrub_record(self.wrapped(*args, **kwargs))


def install_log_redaction() -> None:
    """Scrub every log record the process creates, whichever logger or handler it meets.

    A filter on a logger does not see records of its child loggers (``authlib.integrations.*``
    logs the PKCE verifier), and a filter on a handler misses handlers added later (pytest's,
    gunicorn's). The record factory sees every record made through any logger, so it is the
    one place that covers them all. Installing twice is harmless.
    """
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(current))
