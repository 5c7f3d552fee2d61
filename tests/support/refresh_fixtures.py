"""Fixtures and helpers shared by the refresh, batch-refresh and token-API tests.

A pytest plugin: ``tests/conftest.py`` registers it in ``pytest_plugins``, so its fixtures
(``stub``, ``closed_port``, ``stub_config``, ``vault_app``) are found by name in every test
module, and a module or conftest fixture of the same name overrides them (tests/test_connect.py
has its own ``stub``, for instance). Test modules import the helpers they use by name:
``make_connection``, ``make_api_key_connection``, ``load``, ``OLD_ACCESS_TOKEN`` and the marks
``both_backends`` and ``postgresql_only``.

One PostgreSQL database per module instead of one per test: mark the module
``pytestmark = pytest.mark.shared_postgres_database`` (tests/conftest.py reads the mark).
"""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest

from tests.support.provider_stub import ProviderStub
from vault.extensions import db
from vault.models import Connection, TokenKind, utcnow
from vault.tokens.store import token_vault

OLD_ACCESS_TOKEN = "at-0-old-access-token-value"


@pytest.fixture
def stub():
    """A running provider stand-in (see tests/support/provider_stub.py)."""
    with ProviderStub() as provider:
        yield provider


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def stub_config(app_config, providers_file, stub, closed_port):
    """The app configuration with providers pointing at the stub (and one at nothing)."""
    providers_file.write_text(
        stub.providers_toml("acme")
        + stub.providers_toml("acme-post", token_endpoint_auth_method="client_secret_post")
        + "[oidcacme]\n"
        'type = "oidc"\n'
        f'server_metadata_url = "{stub.discovery_url}"\n'
        f'client_id = "{stub.client_id}"\nclient_secret = "{stub.client_secret}"\n'
        "[down]\n"
        'type = "oauth2"\n'
        'client_id = "c"\nclient_secret = "s"\n'
        f'authorize_url = "http://127.0.0.1:{closed_port}/a"\n'
        f'token_url = "http://127.0.0.1:{closed_port}/token"\n'
        "[greeninvoice]\n"
        'preset = "greeninvoice"\n'
        f'token_url = "{stub.greeninvoice_url}"\n'
        "[voicenter]\n"
        'preset = "voicenter"\n',
        encoding="utf-8",
    )
    app_config.update(
        VAULT_PROVIDER_TIMEOUT_SECONDS=3,
        VAULT_REFRESH_BACKOFF_BASE_SECONDS=30,
        VAULT_REFRESH_BACKOFF_CAP_SECONDS=3600,
    )
    return app_config


@pytest.fixture
def vault_app(stub_config, app):
    """``app`` configured for the stub; the test runs inside its app context."""
    return app


def make_connection(
    stub: ProviderStub,
    *,
    provider: str = "acme",
    subject: str = "account-1",
    expires_in: int | None = 60,
    refresh_token: str | None = None,
    **fields,
) -> int:
    """A committed connection whose access token expires in ``expires_in`` seconds."""
    connection = Connection(
        provider=provider, account_subject=subject, account_email=f"{subject}@example.com", **fields
    )
    db.session.add(connection)
    db.session.flush()
    expires_at = None if expires_in is None else utcnow() + timedelta(seconds=expires_in)
    token_vault.store(connection, TokenKind.ACCESS, OLD_ACCESS_TOKEN, expires_at=expires_at)
    token_vault.store(
        connection, TokenKind.REFRESH, refresh_token or stub.issue_refresh_token()
    )
    db.session.commit()
    return connection.id


def make_api_key_connection(
    provider: str, subject: str, api_key: str, api_secret: str | None = None
) -> int:
    """A committed API-key connection: its pasted key, and secret where the provider has one."""
    connection = Connection(provider=provider, account_subject=subject)
    db.session.add(connection)
    db.session.flush()
    token_vault.store(connection, TokenKind.API_KEY, api_key)
    if api_secret is not None:
        token_vault.store(connection, TokenKind.API_SECRET, api_secret)
    db.session.commit()
    return connection.id


def load(connection_id: int) -> Connection:
    """The connection, read afresh."""
    db.session.expire_all()
    return db.session.get(Connection, connection_id)


@pytest.fixture(scope="module")
def postgres_url(shared_postgres_url):
    """One PostgreSQL database per test module, for modules that bind this fixture by name.

    As a plugin fixture it is overridden everywhere by the conftest ``postgres_url``; a module
    that binds it (``postgres_url = refresh_fixtures.postgres_url``) gets one database for the
    whole module, as ``pytest.mark.shared_postgres_database`` gives. Each test still starts
    from empty tables, since the ``app`` fixture creates and drops them.
    """
    return shared_postgres_url


both_backends = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
