"""Start-up configuration: clear one-line errors, no fallback secrets, .env files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_ENCRYPTION_SECRET, TEST_SECRET_KEY
from vault import PROJECT_ROOT, create_app
from vault.config import (
    DEFAULTS,
    ENVIRONMENT_VARIABLES,
    MAX_REFRESH_CONCURRENCY,
    ConfigError,
    database_url,
    load_config,
)

SECRETS = {"SECRET_KEY": TEST_SECRET_KEY, "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET}


def start(app_config, **changes):
    return create_app({**app_config, **changes})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"ENCRYPTION_SECRET": ""}, "ENCRYPTION_SECRET is not set"),
        ({"ENCRYPTION_SECRET": "too-short"}, "ENCRYPTION_SECRET is too short (9 characters"),
        ({"SECRET_KEY": None}, "SECRET_KEY is not set"),
        ({"ENCRYPTION_SECRET_PREVIOUS": "x" * 40 + ",short"}, "ENCRYPTION_SECRET_PREVIOUS entry #2"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL is malformed"),
        ({"DATABASE_URL": "mysql://db/vault"}, "DATABASE_URL uses 'mysql'"),
        ({"DATABASE_URL": "postgresql://localhost"}, "DATABASE_URL names no database"),
        ({"VAULT_REFRESH_BUFFER_SECONDS": "soon"}, "VAULT_REFRESH_BUFFER_SECONDS must be a whole"),
        ({"VAULT_PROVIDERS_FILE": "/nonexistent/providers.toml"}, "cannot be read"),
        ({"VAULT_PROVIDER_TIMEOUT_SECONDS": "0"}, "VAULT_PROVIDER_TIMEOUT_SECONDS must be at least 1"),
        ({"VAULT_REFRESH_BACKOFF_CAP_SECONDS": "1h"}, "VAULT_REFRESH_BACKOFF_CAP_SECONDS must be"),
        ({"VAULT_REFRESH_LOCK_TIMEOUT_SECONDS": "soon"}, "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS must be"),
        ({"VAULT_REFRESH_LOCK_TIMEOUT_SECONDS": "0"}, "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS must be"),
        ({"VAULT_RATELIMIT_STORAGE_URI": "redis//:pw@cache"}, "VAULT_RATELIMIT_STORAGE_URI must"),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line(app_config, changes, expected):
    with pytest.raises(SystemExit) as stopped:
        start(app_config, **changes)
    message = str(stopped.value.code)
    assert message.startswith("Token Vault cannot start: ")
    assert expected in message
    assert "\n" not in message


def test_error_never_echoes_the_secret(app_config):
    with pytest.raises(SystemExit) as stopped:
        start(app_config, ENCRYPTION_SECRET="hunter2-short")
    assert "hunter2" not in str(stopped.value.code)


def test_invalid_providers_file_names_file_and_key(app_config, providers_file):
    providers_file.write_text('[acme]\ntype = "oidc"\nclient_id = "x"\n', encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        start(app_config)
    message = str(stopped.value.code)
    assert str(providers_file) in message and "[acme]" in message and "client_secret" in message


def test_broken_toml_is_reported(app_config, providers_file):
    providers_file.write_text("[google\n", encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        start(app_config)
    assert "is not valid TOML" in str(stopped.value.code)


def test_postgres_urls_are_routed_through_psycopg3():
    assert database_url("postgres://u:p@h/db").startswith("postgresql+psycopg://u:p@h/db")
    assert database_url("postgresql://h/db") == "postgresql+psycopg://h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_environment_beats_instance_env_which_beats_dot_env(tmp_path, monkeypatch):
    project, instance = tmp_path / "project", tmp_path / "project" / "instance"
    instance.mkdir(parents=True)
    (project / ".env").write_text("VAULT_REFRESH_BUFFER_SECONDS=100\nSECRET_KEY=" + "d" * 40 + "\n")
    (instance / ".env").write_text(
        "VAULT_REFRESH_BUFFER_SECONDS=200\nENCRYPTION_SECRET=" + "i" * 40 + "\n"
    )
    monkeypatch.delenv("VAULT_REFRESH_BUFFER_SECONDS", raising=False)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("ENCRYPTION_SECRET", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = load_config(str(instance), str(project))
    assert config["VAULT_REFRESH_BUFFER_SECONDS"] == 200
    assert config["SECRET_KEY"] == "d" * 40
    assert config["ENCRYPTION_SECRET"] == "i" * 40
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{instance / 'vault.db'}"
    monkeypatch.setenv("VAULT_REFRESH_BUFFER_SECONDS", "300")
    assert load_config(str(instance), str(project))["VAULT_REFRESH_BUFFER_SECONDS"] == 300


def test_no_secret_means_no_start_even_without_any_env(tmp_path, monkeypatch):
    for name in ("SECRET_KEY", "ENCRYPTION_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY is not set"):
        load_config(str(tmp_path / "instance"), str(tmp_path))


def test_flask_cli_prints_one_clear_line_and_no_traceback(tmp_path):
    env = {
        **os.environ,
        "ENCRYPTION_SECRET": "short",
        "SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}",
        "VAULT_PROVIDERS_FILE": os.devnull,
    }
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "db", "current"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "Token Vault cannot start: ENCRYPTION_SECRET is too short (5 characters, need at "
        'least 32); generate one with: python -c "import secrets; '
        'print(secrets.token_urlsafe(48))"'
    ]
    assert "Traceback" not in result.stderr + result.stdout


def test_valid_configuration_starts(app_config):
    app = start(app_config)
    assert app.config["ENCRYPTION_SECRET"] == TEST_ENCRYPTION_SECRET
    assert app.config["VAULT_REFRESH_BUFFER_SECONDS"] == 300


def test_postgresql_pools_allow_one_connection_per_refresh_worker(tmp_path):
    secrets = {"SECRET_KEY": TEST_SECRET_KEY, "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET}

    def engine_options(**overrides):
        config = load_config(str(tmp_path), str(tmp_path), {**secrets, **overrides})
        return config.get("SQLALCHEMY_ENGINE_OPTIONS")

    postgres = "postgresql://vault@db.internal/vault"
    assert engine_options(DATABASE_URL=postgres) == {"max_overflow": MAX_REFRESH_CONCURRENCY}
    own = {"pool_size": 20}
    assert engine_options(DATABASE_URL=postgres, SQLALCHEMY_ENGINE_OPTIONS=own) == own
    assert engine_options(DATABASE_URL=f"sqlite:///{tmp_path / 'v.db'}") is None


@pytest.fixture
def clean_environment(monkeypatch):
    """No Token Vault variable from the developer's shell leaks into the test."""
    for name in ENVIRONMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def env_example() -> list[tuple[str, str, int]]:
    """``.env.example`` as (variable, value, lines of comment just above it), in file order."""
    entries, comment = [], 0
    for line in (Path(PROJECT_ROOT) / ".env.example").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            comment = 0
        elif line.startswith("#"):
            comment += 1
        else:
            match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
            assert match, f"not NAME=value: {line!r}"
            entries.append((match[1], match[2], comment))
            comment = 0
    return entries


def test_env_example_lists_exactly_the_variables_config_reads():
    names = [name for name, _, _ in env_example()]
    assert len(names) == len(set(names))
    assert set(names) == set(ENVIRONMENT_VARIABLES)


def test_env_example_shows_config_defaults_each_with_a_short_comment():
    for name, value, comment_lines in env_example():
        assert value == ("" if DEFAULTS[name] is None else str(DEFAULTS[name])), name
        assert 1 <= comment_lines <= 3, name


def test_a_copy_of_env_example_changes_nothing(tmp_path, clean_environment):
    instance = tmp_path / "instance"
    instance.mkdir()
    untouched = load_config(str(instance), str(tmp_path), SECRETS)
    shutil.copy(Path(PROJECT_ROOT) / ".env.example", instance / ".env")
    assert load_config(str(instance), str(tmp_path), SECRETS) == untouched


# A value other than the default for every variable, as it would appear in the environment.
NON_DEFAULT_VALUES = {
    "SECRET_KEY": "s" * 40,
    "ENCRYPTION_SECRET": "e" * 40,
    "ENCRYPTION_SECRET_PREVIOUS": "p" * 40,
    "DATABASE_URL": "postgresql://vault@db.internal/vault",
    "VAULT_PROVIDERS_FILE": os.devnull,
    "VAULT_REFRESH_BUFFER_SECONDS": "120",
    "VAULT_SESSION_IDLE_MINUTES": "5",
    "VAULT_SESSION_MAX_HOURS": "2",
    "VAULT_RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0",
    "VAULT_TRUSTED_PROXIES": "1",
    "VAULT_BASE_URL": "https://vault.example.com",
    "VAULT_PROVIDER_TIMEOUT_SECONDS": "4",
    "VAULT_REFRESH_BACKOFF_BASE_SECONDS": "7",
    "VAULT_REFRESH_BACKOFF_CAP_SECONDS": "70",
    "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS": "2.5",
    "VAULT_CHECK_INTERVAL_HOURS": "6",
    "VAULT_AUDIT_RETENTION_DAYS": "30",
    "VAULT_AUDIT_HANDOUTS": "hourly",
    "VAULT_HANDOUT_COMMIT": "durable",
    "VAULT_LOG_FORMAT": "json",
    "VAULT_METRICS_TOKEN": "m" * 40,
    "VAULT_RECONNECT_LINK_HOURS": "24",
    "VAULT_WORKER_INTERVAL_SECONDS": "30",
    "VAULT_ALERT_FAILING_MINUTES": "10",
    "VAULT_ALERT_EXPIRING_DAYS": "3",
    "VAULT_SMTP_URL": "smtps://alerts:pw@smtp.example.com:465",
    "VAULT_MAIL_FROM": "vault@example.com",
    "VAULT_ALERT_EMAILS": "ops@example.com,oncall@example.com",
    "VAULT_ALERT_WEBHOOK_URL": "https://hooks.example.com/vault",
    "VAULT_ALERT_WEBHOOK_SECRET": "whsec_" + "b" * 32,
    "VAULT_ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/other",
}
# Alert channels are valid only together (a server and recipients, a URL and its secret, a
# base URL for their links): a complete set is in place, and each variable changes one part.
CHANNELS_IN_PLACE = {
    "VAULT_BASE_URL": "https://other.example.com",
    "VAULT_SMTP_URL": "smtp://127.0.0.1:25",
    "VAULT_MAIL_FROM": "alerts@example.com",
    "VAULT_ALERT_EMAILS": "ops@example.com",
    "VAULT_ALERT_WEBHOOK_URL": "https://receiver.example.com/hook",
    "VAULT_ALERT_WEBHOOK_SECRET": "whsec_" + "a" * 32,
    "VAULT_ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x",
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT_VALUES))
def test_every_declared_variable_is_read_from_the_environment(name, tmp_path, clean_environment):
    assert set(NON_DEFAULT_VALUES) == set(ENVIRONMENT_VARIABLES)
    for secret, value in SECRETS.items():
        clean_environment.setenv(secret, value)
    if name in CHANNELS_IN_PLACE:
        for channel_setting, value in CHANNELS_IN_PLACE.items():
            clean_environment.setenv(channel_setting, value)
    before = load_config(str(tmp_path), str(tmp_path))
    clean_environment.setenv(name, NON_DEFAULT_VALUES[name])
    assert load_config(str(tmp_path), str(tmp_path)) != before


def test_refresh_lock_timeout_comes_from_the_environment(app_config, clean_environment):
    assert start(app_config).config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"] == 15
    assert start(app_config, VAULT_PROVIDER_TIMEOUT_SECONDS=3).config[
        "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"
    ] == 8
    clean_environment.setenv("VAULT_REFRESH_LOCK_TIMEOUT_SECONDS", "2.5")
    assert start(app_config).config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"] == 2.5
    assert start(app_config, VAULT_REFRESH_LOCK_TIMEOUT_SECONDS=40).config[
        "VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"
    ] == 40


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf"])
def test_bad_refresh_lock_timeout_is_a_config_error(value, tmp_path, clean_environment):
    clean_environment.setenv("VAULT_REFRESH_LOCK_TIMEOUT_SECONDS", value)
    with pytest.raises(ConfigError, match="VAULT_REFRESH_LOCK_TIMEOUT_SECONDS must be a number"):
        load_config(str(tmp_path), str(tmp_path), SECRETS)


def test_bad_rate_limit_store_never_echoes_its_password(app_config):
    with pytest.raises(SystemExit) as stopped:
        start(app_config, VAULT_RATELIMIT_STORAGE_URI="reddis://:hunter2@cache:6379/0")
    assert "scheme 'reddis'" in str(stopped.value.code)
    assert "hunter2" not in str(stopped.value.code)
