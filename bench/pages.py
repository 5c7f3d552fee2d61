"""The dashboard pages with 10,000 connections on PostgreSQL, against what they cannot avoid.

For each page (providers, connections, health, audit) one run measures, interleaved:

* the page rendered server-side (Flask test client, signed in as an admin);
* ``/healthz`` through the same client: the cost of any signed-in request (session, user
  load, security headers) with no page behind it;
* the page's own SQL executed bare: the statements the page ran, captured with a
  ``before_cursor_execute`` listener, re-executed with the same parameters on a raw DBAPI
  connection, rows fetched.

Target (issue 6): page <= 3 x (healthz + bare SQL). What it checks is that the Python side
(ORM, templates) adds at most twice the unavoidable work, whatever the data size.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from pathlib import Path

from sqlalchemy import event, text

from tests.support.databases import bench_app, temporary_database
from bench.timing import best_per_call, verdict
from vault.services import accounts
from vault.cli.demo import seed_demo
from vault.extensions import db

CONNECTIONS = int(os.environ.get("BENCH_PAGES_CONNECTIONS", 10_000))
PAGES = {"providers": "/", "connections": "/connections", "health": "/health", "audit": "/audit"}
TARGET = 3.0
PROVIDERS = """
[google]
preset = "google"
client_id = "bench-client"
client_secret = "bench-secret"
[microsoft]
preset = "microsoft"
client_id = "bench-client"
client_secret = "bench-secret"
[voicenter]
preset = "voicenter"
[greeninvoice]
preset = "greeninvoice"
[whatsapp]
preset = "whatsapp"
"""
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def _signed_in_client(app, email: str, password: str):
    client = app.test_client()
    token = _CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    response = client.post("/login", data={"email": email, "password": password,
                                            "csrf_token": token})
    assert response.status_code == 302, "signing in failed"
    return client


def _capture(app, client, path: str) -> list[tuple[str, object]]:
    """The statements (and parameters) one request for ``path`` runs."""
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get(path)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200, f"{path} answered {response.status_code}"
    return statements


def _bare(raw, statements):
    def run() -> None:
        cursor = raw.cursor()
        for statement, parameters in statements:
            cursor.execute(statement, parameters)
            if cursor.description is not None:
                cursor.fetchall()
        cursor.close()
        raw.rollback()

    return run


def _fill(app) -> tuple[str, str, float]:
    email, password = "bench-admin@example.com", secrets.token_urlsafe(16)
    with app.app_context():
        accounts.create_user(email, "admin", password)
        db.session.commit()
        started = time.perf_counter()
        report = seed_demo(CONNECTIONS, seed=6)
        seeding = time.perf_counter() - started
        assert report.connections == CONNECTIONS
        # What autovacuum does to a database in use: statistics and the visibility map
        # (which lets PostgreSQL answer from an index alone).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return email, password, seeding


def main() -> bool:
    with temporary_database() as url, tempfile.TemporaryDirectory() as folder:
        providers = Path(folder) / "providers.toml"
        providers.write_text(PROVIDERS, encoding="utf-8")
        app = bench_app(url, VAULT_PROVIDERS_FILE=str(providers))
        email, password, seeding = _fill(app)
        print(f"seed-demo --connections {CONNECTIONS}: {seeding:.1f} s")
        client = _signed_in_client(app, email, password)
        with app.app_context():
            raw = db.engine.raw_connection()
        met = True
        try:
            for name, path in PAGES.items():
                client.get(path)  # templates compiled, caches warm
                statements = _capture(app, client, path)
                times = best_per_call(
                    {
                        "page": lambda path=path: client.get(path),
                        "healthz": lambda: client.get("/healthz"),
                        "sql": _bare(raw, statements),
                    },
                    calls=5,
                )
                floor = times["healthz"] + times["sql"]
                ratio = times["page"] / floor
                met &= ratio <= TARGET
                print(f"{name:<12} {path:<13} page {times['page'] * 1000:7.2f} ms | healthz "
                      f"{times['healthz'] * 1000:5.2f} ms + bare SQL ({len(statements)} "
                      f"statements) {times['sql'] * 1000:6.2f} ms | ratio {ratio:4.2f} "
                      f"(target <= {TARGET:g})  {verdict(ratio <= TARGET)}")
        finally:
            raw.close()
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
    return met
