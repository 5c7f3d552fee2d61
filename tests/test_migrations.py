"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import contextlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from vault import create_app
from tests.support.databases import temporary_database
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


# SQLite cannot reflect expression indexes (the PostgreSQL-only search indexes on lower()):
# alembic says it skips them there; PostgreSQL compares them.
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
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


def database_objects(engine) -> dict[str, str]:
    """The triggers, their functions and the indexes, by name, whitespace folded: what
    compare_metadata does not see (triggers, PostgreSQL's INCLUDE columns)."""
    if engine.dialect.name == "postgresql":
        queries = (
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal",
            "SELECT proname, prosrc FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace",
        )
    else:
        queries = ("SELECT name, sql FROM sqlite_master WHERE type IN ('trigger', 'index') "
                   "AND sql IS NOT NULL",)
    with engine.connect() as connection:
        return {name: " ".join(definition.replace("(", " ( ").replace(")", " ) ").split())
                for query in queries for name, definition in connection.execute(text(query))
                if not name.startswith("alembic_version")}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_migrations_install_the_triggers_and_indexes_the_models_do(migrated_app, tmp_path):
    migrated = database_objects(db.engine)
    if db.engine.dialect.name == "postgresql":
        built = temporary_database(db.engine.url, prefix="tokenvault_test")
    else:
        built = contextlib.nullcontext(f"sqlite:///{tmp_path / 'built.db'}")
    with built as url:
        application = create_app({**migrated_app.config, "DATABASE_URL": url})
        with application.app_context():
            db.create_all()
            created = database_objects(db.engine)
            db.engine.dispose()
    assert "connection_tokens_update" in created
    assert migrated == created


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


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_downgrading_the_latest_migrations_keeps_the_rows_and_who_they_name(migrated_app):
    # SQLite rebuilds a table to alter it; rebuilding users must not null every reference.
    db.session.execute(text("INSERT INTO users (id, email, role, enabled, must_change_password,"
                            " created_at, updated_at) VALUES (7, 'a@example.com', 'admin', true,"
                            " false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    db.session.execute(text("INSERT INTO audit_events (occurred_at, actor, actor_user_id, action,"
                            " connection_id, outcome) VALUES (CURRENT_TIMESTAMP, 'a@example.com',"
                            " 7, 'auth.sign_in', NULL, 'success')"))
    db.session.commit()

    downgrade(revision="0003_dashboard_token_index")
    upgrade()

    assert db.session.execute(text("SELECT actor_user_id FROM audit_events")).all() == [(7,)]
    assert db.session.execute(text("SELECT id, session_epoch FROM users")).all() == [(7, 0)]
