"""Settings from the environment, ``.env`` and ``instance/.env``, checked at start-up.

Precedence, highest first: values passed to ``create_app(config)``, the process environment,
``instance/.env``, ``.env``; an empty value counts as unset. Nothing has a fallback secret: a
missing or weak one stops the app with a one-line :class:`ConfigError` that says how to fix
it. This module is the only place that reads a setting or knows its default: every key
:func:`load_config` returns is always present, so the rest of the code reads
``app.config["NAME"]`` and never supplies a default of its own.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from limits.storage import SCHEMES as RATELIMIT_SCHEMES
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from vault.crypto import MIN_SECRET_LENGTH

SUPPORTED_DATABASES = ("sqlite", "postgresql+psycopg")
SECRET_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
# The most connections `vault refresh-due --concurrency` may refresh at once.
MAX_REFRESH_CONCURRENCY = 64
# A refresh waiting for another's row lock must outlast the holder's provider call, which is
# bounded by VAULT_PROVIDER_TIMEOUT_SECONDS; this margin covers the holder's database work.
LOCK_TIMEOUT_MARGIN_SECONDS = 5
# The largest request body read: every form here is a few kilobytes. A bigger one is refused
# with 413 from its Content-Length, before anything reads it.
MAX_REQUEST_BYTES = 1024 * 1024
# VAULT_LOG_FORMAT's choices.
LOG_FORMATS = ("text", "json")
# VAULT_AUDIT_HANDOUTS' choices: an audit row per token handed out, or one per key, connection
# and hour with a count.
HANDOUT_AUDIT_MODES = ("each", "hourly")
# VAULT_HANDOUT_COMMIT's choices: whether the token API's one-statement hand-out (its audit
# row) waits for the database's disk before answering ("durable"), or not ("async";
# vault.services.handout).
HANDOUT_COMMIT_MODES = ("async", "durable")
# Host names answered besides VAULT_BASE_URL's, so health probes and a shell on the host
# itself (curl http://127.0.0.1:5000/healthz) keep working.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
# Enough to catch a typo in an alert address; the SMTP server has the last word.
EMAIL_SHAPE = re.compile(r"[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>]+")

# Every variable read from the environment, with its default: the one place a default is
# written. None means no fixed default: unset (secrets, VAULT_BASE_URL) or worked out in
# load_config from the instance folder or another setting. .env.example lists exactly these.
DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "SECRET_KEY": None,
    "ENCRYPTION_SECRET": None,
    "ENCRYPTION_SECRET_PREVIOUS": None,
    "DATABASE_URL": None,  # SQLite at instance/vault.db
    "VAULT_PROVIDERS_FILE": None,  # instance/providers.toml, optional
    "VAULT_REFRESH_BUFFER_SECONDS": 300,
    "VAULT_SESSION_IDLE_MINUTES": 30,
    "VAULT_SESSION_MAX_HOURS": 8,
    "VAULT_RATELIMIT_STORAGE_URI": "memory://",
    "VAULT_TRUSTED_PROXIES": 0,
    "VAULT_BASE_URL": None,  # taken from each request
    "VAULT_PROVIDER_TIMEOUT_SECONDS": 10,
    "VAULT_REFRESH_BACKOFF_BASE_SECONDS": 30,
    "VAULT_REFRESH_BACKOFF_CAP_SECONDS": 3600,
    "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS": None,  # provider timeout + LOCK_TIMEOUT_MARGIN_SECONDS
    "VAULT_WORKER_INTERVAL_SECONDS": 60,  # between `vault worker` cycles, with jitter
    "VAULT_RECONNECT_LINK_HOURS": 72,  # how long a reconnect or connect link may be used
    # Alerts (vault/alerts): the rules' thresholds, then the channels; no channel, no sending.
    "VAULT_ALERT_FAILING_MINUTES": 30,  # refresh failing this long -> connection.refresh_failing
    "VAULT_ALERT_EXPIRING_DAYS": 7,  # a credential nothing renews ends within -> .expiring
    "VAULT_SMTP_URL": None,  # smtp://user:password@host:587 (STARTTLS if offered), smtps://
    "VAULT_MAIL_FROM": None,  # the From address of alert e-mails
    "VAULT_ALERT_EMAILS": None,  # recipients, comma-separated
    "VAULT_ALERT_WEBHOOK_URL": None,  # Standard Webhooks receiver
    "VAULT_ALERT_WEBHOOK_SECRET": None,  # whsec_... signing secret
    "VAULT_ALERT_SLACK_WEBHOOK_URL": None,  # a Slack incoming-webhook URL
    "VAULT_CHECK_INTERVAL_HOURS": 24,
    "VAULT_AUDIT_RETENTION_DAYS": 400,
    "VAULT_AUDIT_HANDOUTS": "each",  # or "hourly"
    "VAULT_HANDOUT_COMMIT": "async",  # or "durable"
    "VAULT_LOG_FORMAT": "text",  # or "json": one JSON object per line
    "VAULT_METRICS_TOKEN": None,  # unset: /metrics answers loopback only
})
ENVIRONMENT_VARIABLES: tuple[str, ...] = tuple(DEFAULTS)


class ConfigError(ValueError):
    """The configuration cannot work; the message names the setting and the fix."""


def read_environment(instance_path: str, project_root: str) -> dict[str, str]:
    """The environment merged over ``instance/.env`` over ``.env`` (without touching os.environ)."""
    merged: dict[str, str] = {}
    for dotenv_file in (Path(project_root) / ".env", Path(instance_path) / ".env"):
        if dotenv_file.is_file():
            merged.update({k: v for k, v in dotenv_values(dotenv_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def load_config(
    instance_path: str, project_root: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build the Flask config mapping, validated; raises :class:`ConfigError`."""
    env = read_environment(instance_path, project_root)
    overrides = dict(overrides or {})

    def given(name: str) -> Any:
        # Only declared variables may be read, so ENVIRONMENT_VARIABLES cannot go stale.
        if name not in DEFAULTS:
            raise KeyError(f"{name} is not in vault.config.DEFAULTS")
        value = overrides[name] if name in overrides else env.get(name)
        return None if value is None or value == "" else value

    def setting(name: str) -> Any:
        value = given(name)
        return DEFAULTS[name] if value is None else value

    def integer(name: str, minimum: int) -> int:
        return _integer(setting(name), name, minimum)

    provider_timeout = integer("VAULT_PROVIDER_TIMEOUT_SECONDS", 1)
    lock_timeout = given("VAULT_REFRESH_LOCK_TIMEOUT_SECONDS")
    if lock_timeout is None:
        lock_timeout = provider_timeout + LOCK_TIMEOUT_MARGIN_SECONDS
    base_url = _base_url(setting("VAULT_BASE_URL"))
    config: dict[str, Any] = {
        "SECRET_KEY": _secret(setting("SECRET_KEY"), "SECRET_KEY"),
        "ENCRYPTION_SECRET": _secret(setting("ENCRYPTION_SECRET"), "ENCRYPTION_SECRET"),
        "ENCRYPTION_SECRET_PREVIOUS": _previous_secrets(setting("ENCRYPTION_SECRET_PREVIOUS")),
        "SQLALCHEMY_DATABASE_URI": database_url(
            given("DATABASE_URL") or f"sqlite:///{Path(instance_path) / 'vault.db'}"
        ),
        "VAULT_PROVIDERS_FILE": str(
            given("VAULT_PROVIDERS_FILE") or Path(instance_path) / "providers.toml"
        ),
        # A file named explicitly must exist; the default one is optional (no providers).
        "VAULT_PROVIDERS_FILE_REQUIRED": given("VAULT_PROVIDERS_FILE") is not None,
        "VAULT_REFRESH_BUFFER_SECONDS": integer("VAULT_REFRESH_BUFFER_SECONDS", 0),
        "VAULT_SESSION_IDLE_MINUTES": integer("VAULT_SESSION_IDLE_MINUTES", 1),
        "VAULT_SESSION_MAX_HOURS": integer("VAULT_SESSION_MAX_HOURS", 1),
        # Flask-Limiter reads its storage from this key.
        "RATELIMIT_STORAGE_URI": _ratelimit_storage(setting("VAULT_RATELIMIT_STORAGE_URI")),
        "VAULT_BASE_URL": base_url,
        # Flask refuses (400) a request whose Host is not one of these; None answers any.
        "TRUSTED_HOSTS": _trusted_hosts(base_url),
        "VAULT_TRUSTED_PROXIES": integer("VAULT_TRUSTED_PROXIES", 0),
        "VAULT_PROVIDER_TIMEOUT_SECONDS": provider_timeout,
        "VAULT_REFRESH_BACKOFF_BASE_SECONDS": integer("VAULT_REFRESH_BACKOFF_BASE_SECONDS", 1),
        "VAULT_REFRESH_BACKOFF_CAP_SECONDS": integer("VAULT_REFRESH_BACKOFF_CAP_SECONDS", 1),
        "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS": _seconds(
            lock_timeout, "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"
        ),
        "VAULT_WORKER_INTERVAL_SECONDS": integer("VAULT_WORKER_INTERVAL_SECONDS", 1),
        "VAULT_RECONNECT_LINK_HOURS": integer("VAULT_RECONNECT_LINK_HOURS", 1),
        "VAULT_ALERT_FAILING_MINUTES": integer("VAULT_ALERT_FAILING_MINUTES", 1),
        "VAULT_ALERT_EXPIRING_DAYS": integer("VAULT_ALERT_EXPIRING_DAYS", 1),
        **_alert_channels(setting, base_url),
        # How often the worker checks each stored credential (vault/services/checks.py).
        "VAULT_CHECK_INTERVAL_HOURS": integer("VAULT_CHECK_INTERVAL_HOURS", 1),
        "VAULT_AUDIT_RETENTION_DAYS": integer("VAULT_AUDIT_RETENTION_DAYS", 1),
        "VAULT_AUDIT_HANDOUTS": _choice(
            setting("VAULT_AUDIT_HANDOUTS"), "VAULT_AUDIT_HANDOUTS", HANDOUT_AUDIT_MODES
        ),
        "VAULT_HANDOUT_COMMIT": _choice(
            setting("VAULT_HANDOUT_COMMIT"), "VAULT_HANDOUT_COMMIT", HANDOUT_COMMIT_MODES
        ),
        "VAULT_LOG_FORMAT": _choice(
            setting("VAULT_LOG_FORMAT"), "VAULT_LOG_FORMAT", LOG_FORMATS
        ),
        "VAULT_METRICS_TOKEN": _metrics_token(setting("VAULT_METRICS_TOKEN")),
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session, which expires
        "MAX_CONTENT_LENGTH": MAX_REQUEST_BYTES,
    }
    # Anything else a caller passes (TESTING, SERVER_NAME, ...) goes through untouched.
    for key, value in overrides.items():
        if key not in DEFAULTS and key not in config:
            config[key] = value
    if config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # A process holds at most one connection per thread that uses the database: a few in
        # a web worker, up to refresh-due's --concurrency in the CLI, where the pool's default
        # ceiling (5 + 10 overflow) would leave the extra workers waiting for connections.
        config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"max_overflow": MAX_REFRESH_CONCURRENCY})
    return config


def _secret(value: Any, name: str) -> str:
    if not value:
        raise ConfigError(f"{name} is not set; {SECRET_HINT} and put it in instance/.env")
    if len(str(value)) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{name} is too short ({len(str(value))} characters, need at least "
            f"{MIN_SECRET_LENGTH}); {SECRET_HINT}"
        )
    return str(value)


def _previous_secrets(value: Any) -> list[str]:
    if not value:
        return []
    secrets = [part.strip() for part in value.split(",")] if isinstance(value, str) else list(value)
    for position, secret in enumerate(secrets, start=1):
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"ENCRYPTION_SECRET_PREVIOUS entry #{position} is shorter than "
                f"{MIN_SECRET_LENGTH} characters; list retired secrets exactly, comma-separated"
            )
    return secrets


def _integer(value: Any, name: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return text


def _metrics_token(value: Any) -> str | None:
    # A bearer token anyone may try against /metrics, with no throttle: long and random.
    # The message never repeats the value.
    if value is None:
        return None
    if len(str(value)) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"VAULT_METRICS_TOKEN is too short ({len(str(value))} characters, need at least "
            f"{MIN_SECRET_LENGTH}); {SECRET_HINT}"
        )
    return str(value)


def _seconds(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 < number < math.inf:  # also refuses nan
        raise ConfigError(f"{name} must be a number of seconds above 0, got {value!r}")
    return number


def _ratelimit_storage(value: Any) -> str:
    # Only the scheme is named: the rest of a redis:// URI may hold a password.
    scheme = urlsplit(str(value)).scheme
    if "://" not in str(value) or scheme.startswith("async+") or scheme not in RATELIMIT_SCHEMES:
        raise ConfigError(
            f"VAULT_RATELIMIT_STORAGE_URI must be memory:// or a shared store such as "
            f"redis://HOST:6379/0, got a value with scheme {scheme or 'none'!r}"
        )
    return str(value)


def _base_url(value: Any) -> str | None:
    if not value:
        return None
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"VAULT_BASE_URL must look like https://vault.example.com, got {value!r}"
        )
    return str(value).rstrip("/")


def _alert_channels(setting: Callable[[str], Any], base_url: str | None) -> dict[str, Any]:
    """The alert channels' settings, checked; messages never repeat a URL or secret given."""
    smtp_url, mail_from = setting("VAULT_SMTP_URL"), setting("VAULT_MAIL_FROM")
    emails = [a.strip() for a in str(setting("VAULT_ALERT_EMAILS") or "").split(",") if a.strip()]
    webhook_url = setting("VAULT_ALERT_WEBHOOK_URL")
    webhook_secret = setting("VAULT_ALERT_WEBHOOK_SECRET")
    slack_url = setting("VAULT_ALERT_SLACK_WEBHOOK_URL")
    if smtp_url or emails or mail_from:
        _smtp_url(smtp_url)
        if not emails:
            raise ConfigError("VAULT_ALERT_EMAILS is empty; name the alert recipients, "
                              "comma-separated, or unset VAULT_SMTP_URL")
        if not mail_from:
            raise ConfigError("VAULT_MAIL_FROM is not set; alert e-mails need a From address")
        for address in [*emails, mail_from]:
            if not EMAIL_SHAPE.fullmatch(address):
                raise ConfigError(f"alert e-mail address {address!r} is not an e-mail address "
                                  "(VAULT_ALERT_EMAILS, VAULT_MAIL_FROM)")
    if webhook_url or webhook_secret:
        _https_url(webhook_url, "VAULT_ALERT_WEBHOOK_URL", allow_http=True)
        if not str(webhook_secret or "").startswith("whsec_") or not _base64(
            str(webhook_secret)[len("whsec_"):]
        ):
            raise ConfigError("VAULT_ALERT_WEBHOOK_SECRET must be whsec_ followed by base64 "
                              "(generate one with: python -c \"import base64, secrets; print("
                              "'whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\")")
    if slack_url:
        _https_url(slack_url, "VAULT_ALERT_SLACK_WEBHOOK_URL", allow_http=False)
    if (smtp_url or webhook_url or slack_url) and not base_url:
        raise ConfigError("alert channels are set but VAULT_BASE_URL is not; alerts link to "
                          "the vault's pages, so set it to the vault's public URL")
    return {
        "VAULT_SMTP_URL": smtp_url,
        "VAULT_MAIL_FROM": mail_from,
        "VAULT_ALERT_EMAILS": emails,
        "VAULT_ALERT_WEBHOOK_URL": webhook_url,
        "VAULT_ALERT_WEBHOOK_SECRET": webhook_secret,
        "VAULT_ALERT_SLACK_WEBHOOK_URL": slack_url,
    }


def _smtp_url(value: Any) -> None:
    if not value:
        raise ConfigError("VAULT_SMTP_URL is not set but alert e-mails are; use "
                          "smtp://USER:PASSWORD@HOST:587, smtps://HOST:465 or smtp://HOST:25")
    parts = urlsplit(str(value))
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ConfigError("VAULT_SMTP_URL has a port that is not a number") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("VAULT_SMTP_URL must look like smtp://USER:PASSWORD@HOST:587 or "
                          f"smtps://HOST:465 (got scheme {parts.scheme or 'none'!r})")
    if bool(parts.username) != bool(parts.password):
        raise ConfigError("VAULT_SMTP_URL needs both a user and a password, or neither")


def _https_url(value: Any, name: str, *, allow_http: bool) -> None:
    parts = urlsplit(str(value or ""))
    schemes = ("http", "https") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{name} must be an {' or '.join(schemes)} URL "
                          f"(got scheme {parts.scheme or 'none'!r})")


def _base64(value: str) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) > 0
    except (ValueError, binascii.Error):
        return False


def _trusted_hosts(base_url: str | None) -> list[str] | None:
    # With a base URL, absolute URLs and redirect URIs never follow a Host header an attacker
    # chose: only the base URL's host (any port) and the loopback names are answered.
    hostname = urlsplit(base_url).hostname if base_url else None
    if not hostname or ":" in hostname:
        return None  # Werkzeug cannot match an IPv6 literal against a trusted name
    return [hostname, *(host for host in LOOPBACK_HOSTS if host != hostname)]


def database_url(value: str) -> str:
    """Normalise and check a DATABASE_URL; PostgreSQL always goes through psycopg 3."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL is malformed; use postgresql+psycopg://USER:PASSWORD@HOST:5432/DB "
            "or sqlite:////absolute/path/vault.db"
        ) from None
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername not in SUPPORTED_DATABASES:
        raise ConfigError(
            f"DATABASE_URL uses {url.drivername!r}, which Token Vault does not support; "
            "use postgresql+psycopg://... or sqlite:///..."
        )
    if url.drivername.startswith("postgresql") and not url.database:
        raise ConfigError("DATABASE_URL names no database; add /DBNAME at the end")
    return url.render_as_string(hide_password=False)
