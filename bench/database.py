"""A throwaway PostgreSQL database for a benchmark run (created, then dropped)."""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from vault import create_app
from vault.extensions import db

SERVER_URL = os.environ.get(
    "VAULT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """Yield the URL of a new empty PostgreSQL database; drop it afterwards."""
    server = make_url(SERVER_URL).set(drivername="postgresql+psycopg")
    name = f"tokenvault_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_app(database_url: str, **config):
    """An app on ``database_url`` with throwaway secrets and its schema created."""
    settings = {
        "SECRET_KEY": secrets.token_urlsafe(32),
        "ENCRYPTION_SECRET": secrets.token_urlsafe(32),
        "DATABASE_URL": database_url,
        "VAULT_PROVIDERS_FILE": os.devnull,
        **config,
    }
    app = create_app(settings)
    with app.app_context():
        db.create_all()
    return app
