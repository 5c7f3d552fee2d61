"""Settings from the environment, ``.env`` and ``instance/.env``, checked at start-up.

Precedence, highest first: values passed to ``create_app(config)``, the process environment,
``instance/.env``, ``.env``. Nothing has a fallback secret: a missing or weak one stops the
app with a one-line :class:`ConfigError` that says how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from vault.crypto import MIN_SECRET_LENGTH

SUPPORTED_DATABASES = ("sqlite", "postgresql+psycopg")
SECRET_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
# The most connections `vault refresh-due --concurrency` may refresh at once.
MAX_REFRESH_CONCURRENCY = 64


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

    def setting(name: str, default: Any = None) -> Any:
        if name in overrides:
            return overrides[name]
        value = env.get(name)
        return default if value in (None, "") else value

    config: dict[str, Any] = {
        "SECRET_KEY": _secret(setting("SECRET_KEY"), "SECRET_KEY"),
        "ENCRYPTION_SECRET": _secret(setting("ENCRYPTION_SECRET"), "ENCRYPTION_SECRET"),
        "ENCRYPTION_SECRET_PREVIOUS": _previous_secrets(setting("ENCRYPTION_SECRET_PREVIOUS")),
        "SQLALCHEMY_DATABASE_URI": database_url(
            setting("DATABASE_URL", f"sqlite:///{Path(instance_path) / 'vault.db'}")
        ),
        "VAULT_PROVIDERS_FILE": setting(
            "VAULT_PROVIDERS_FILE", str(Path(instance_path) / "providers.toml")
        ),
        "VAULT_PROVIDERS_FILE_REQUIRED": "VAULT_PROVIDERS_FILE" in overrides
        or "VAULT_PROVIDERS_FILE" in env,
        "VAULT_REFRESH_BUFFER_SECONDS": _integer(
            setting("VAULT_REFRESH_BUFFER_SECONDS", 300), "VAULT_REFRESH_BUFFER_SECONDS", 0
        ),
        "VAULT_SESSION_IDLE_MINUTES": _integer(
            setting("VAULT_SESSION_IDLE_MINUTES", 30), "VAULT_SESSION_IDLE_MINUTES", 1
        ),
        "VAULT_SESSION_MAX_HOURS": _integer(
            setting("VAULT_SESSION_MAX_HOURS", 8), "VAULT_SESSION_MAX_HOURS", 1
        ),
        "RATELIMIT_STORAGE_URI": setting("VAULT_RATELIMIT_STORAGE_URI", "memory://"),
        "VAULT_BASE_URL": _base_url(setting("VAULT_BASE_URL")),
        "VAULT_TRUSTED_PROXIES": _integer(
            setting("VAULT_TRUSTED_PROXIES", 0), "VAULT_TRUSTED_PROXIES", 0
        ),
        "VAULT_PROVIDER_TIMEOUT_SECONDS": _integer(
            setting("VAULT_PROVIDER_TIMEOUT_SECONDS", 10), "VAULT_PROVIDER_TIMEOUT_SECONDS", 1
        ),
        "VAULT_REFRESH_BACKOFF_BASE_SECONDS": _integer(
            setting("VAULT_REFRESH_BACKOFF_BASE_SECONDS", 30),
            "VAULT_REFRESH_BACKOFF_BASE_SECONDS", 1,
        ),
        "VAULT_REFRESH_BACKOFF_CAP_SECONDS": _integer(
            setting("VAULT_REFRESH_BACKOFF_CAP_SECONDS", 3600),
            "VAULT_REFRESH_BACKOFF_CAP_SECONDS", 1,
        ),
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session, which expires
    }
    # Anything else a caller passes (TESTING, SERVER_NAME, ...) goes through untouched.
    for key, value in overrides.items():
        if key not in {"DATABASE_URL"} and key not in config:
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


def _base_url(value: Any) -> str | None:
    if not value:
        return None
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"VAULT_BASE_URL must look like https://vault.example.com, got {value!r}"
        )
    return str(value).rstrip("/")


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
