"""A throwaway PostgreSQL database for a benchmark run (created, then dropped)."""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from vault import create_app
from vault.extensions import db

SERVER_URL = os.environ.get(
    "VAULT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextlib.contextmanager
def temporary_database(
    server_url: str | URL = SERVER_URL, *, prefix: str = "tokenvault_bench"
) -> Iterator[str]:
    """Yield the URL of a new empty PostgreSQL database on the server; drop it afterwards.

    The tests make theirs with this too (``prefix`` tells them apart from benchmarks').
    """
    server = make_url(server_url)
    if server.drivername in ("postgres", "postgresql"):  # no driver named: the project's
        server = server.set(drivername="postgresql+psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
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
