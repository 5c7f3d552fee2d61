"""Engine settings that the models rely on, per backend."""

from __future__ import annotations

import contextlib
import os

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import URL

from vault.extensions import db

# The SQLite database holds every encrypted token and the staff password hashes: owner only.
SQLITE_FILE_MODE = 0o600
# How long a SQLite write waits for another connection's write transaction. Writes are short
# (no provider call happens inside one: see vault/refresh/rows.py's leases), so this is ample.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def configure_engine(app: Flask) -> None:
    """SQLite: a private database file in WAL mode; enforce foreign keys; wait for locks."""
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return
    create_private_file(engine.url)
    file_database = is_file_database(engine.url)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if file_database:
            # WAL: readers (pages, sign-in's look-ups, hand-outs) never wait for the writer,
            # and the web server and `vault worker` share one file (`make run`). Persistent in
            # the file; synchronous stays FULL so a committed rotated refresh token survives
            # a power cut.
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()


def is_file_database(url: URL) -> bool:
    """True for a SQLite database in a file (not ``:memory:`` nor a shared-memory URI)."""
    path = url.database
    if not path or path == ":memory:":
        return False
    return "mode=memory" not in path and url.query.get("mode") != "memory"


def create_private_file(url: URL) -> None:
    """Create the SQLite database file readable by its owner only, before SQLite does.

    SQLite would create it with the umask's mode (usually world-readable), and gives its
    journal and WAL files the database file's mode. An existing file is left as it is, and
    so are in-memory databases, ``file:`` URIs and a folder that does not exist (SQLite then
    reports that it cannot open the file, as before).
    """
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:") or url.query.get("uri"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE))
