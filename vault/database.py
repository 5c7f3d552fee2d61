"""Engine settings that the models rely on, per backend."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import event

from vault.extensions import db


def configure_engine(app: Flask) -> None:
    """SQLite: enforce foreign keys (cascades) and wait for locks instead of failing."""
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 10000")
        cursor.close()
