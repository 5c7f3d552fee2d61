"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from vault import create_app
from vault.extensions import db

EXPECTED_TABLES = {"users", "connections", "tokens", "service_keys", "audit_events"}


@pytest.fixture
def migrated_app(app_config):
    """An app whose empty database has been upgraded by the migrations (no create_all)."""
    application = create_app(app_config)
    with application.app_context():
        upgrade()
        yield application
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_migrations_match_the_models(migrated_app):
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, db.metadata)
        tables = set(inspect(connection).get_table_names())
    assert differences == []
    assert EXPECTED_TABLES <= tables


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_migrations_downgrade_to_empty(migrated_app):
    downgrade(revision="base")
    with db.engine.connect() as connection:
        remaining = set(inspect(connection).get_table_names()) - {"alembic_version"}
    assert remaining == set()


def test_tokens_table_has_no_plaintext_column(app):
    columns = {column.name for column in db.metadata.tables["tokens"].columns}
    assert "ciphertext" in columns
    assert not columns & {"value", "token", "plaintext", "access_token", "refresh_token"}
