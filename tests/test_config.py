"""Start-up configuration: clear one-line errors, no fallback secrets, .env files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import TEST_ENCRYPTION_SECRET, TEST_SECRET_KEY
from vault import PROJECT_ROOT, create_app
from vault.config import MAX_REFRESH_CONCURRENCY, ConfigError, database_url, load_config


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
