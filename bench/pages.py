"""The dashboard pages at 1,000 and at 100,000 connections on PostgreSQL, in one run.

One database is filled with ``seed-demo`` (1,000 connections, their tokens and audit trail),
measured, then grown to 100,000 by bulk ``INSERT ... SELECT`` over ``generate_series``: 99
copies of the seeded rows (connections, tokens, audit events, tags) under new ids and
subjects, so the spread of statuses and expiries stays the seed's, and measured again. The
copies' ciphertexts keep their template's AAD, so they would not decrypt: only list pages
read them, and the connection page measured is a seeded one.

For each page, per size: the page rendered server-side (Flask test client, signed in as an
admin), best of interleaved rounds; the ratio 100k / 1k, target (issue 18) <= 2.0. Beside
it, at 100k, the page against ``/healthz`` plus the page's own SQL run bare on a raw DBAPI
connection (issue 6's figure: what the Python side adds).
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from pathlib import Path

from sqlalchemy import event, select, text

from bench.timing import best_per_call, verdict
from tests.support.databases import bench_app, temporary_database
from vault.cli.demo import seed_demo
from vault.extensions import db
from vault.models import Connection
from vault.services import accounts

SMALL = 1_000
LARGE = int(os.environ.get("BENCH_PAGES_CONNECTIONS", 100_000))
TARGET = 2.0
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
_NEXT = re.compile(r'href="([^"]*after=[^"]+)"')


def pages(connection_id: int) -> dict[str, str]:
    """What is measured: every page, the list with each filter, search and a later page.

    Each list shows a full page (50 rows) at both sizes, so that the ratio measures what
    the number of connections costs, not rows rendered: the search "a" matches about 80
    seeded accounts at 1,000 (a first name's prefix, "dana", matched 16, a third of a
    page, against a full one at 100,000).
    """
    return {
        "providers": "/",
        "connections": "/connections",
        "  provider": "/connections?provider=google",
        "  expiring": "/connections?status=expiring",
        "  reconnect": "/connections?status=needs_reconnect",
        "  search": "/connections?q=a",
        "  sort": "/connections?sort=reconnect",
        "  owner": "/connections?owner=owner-3%40example.com",
        "  tag": "/connections?tag=billing",
        "health": "/health",
        "audit": "/audit",
        "  action": "/audit?action=token.refreshed",
        "connection": f"/connections/{connection_id}",
    }


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


def _vacuum() -> None:
    # What autovacuum does to a database in use: statistics and the visibility map
    # (which lets PostgreSQL answer from an index alone).
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def _seed(app) -> tuple[str, str, int]:
    email, password = "bench-admin@example.com", secrets.token_urlsafe(16)
    with app.app_context():
        accounts.create_user(email, "admin", password)
        db.session.commit()
        report = seed_demo(SMALL, seed=6)
        assert report.connections == SMALL
        # Owners and tags for the ?owner= and ?tag= filters: one owner in ten, a tag in five.
        db.session.execute(text("UPDATE connections SET owner_email = 'owner-' || (id % 10) "
                                "|| '@example.com'"))
        db.session.execute(text("INSERT INTO connection_tags (connection_id, tag) "
                                "SELECT id, (ARRAY['billing','calendar','crm','ops','sales'])"
                                "[1 + id % 5] FROM connections"))
        db.session.commit()
        _vacuum()
        first = db.session.scalar(
            select(Connection.id).where(Connection.status == "active").order_by(Connection.id)
        )
    return email, password, first


_COPY_CONNECTIONS = """
INSERT INTO connections ({columns}, id, account_subject, account_email)
SELECT {columns}, c.id + g * :span, c.account_subject || '-' || g,
       regexp_replace(c.account_email, '@', '.' || g || '@')
FROM connections c CROSS JOIN generate_series(1, :copies) AS g WHERE c.id <= :span
"""
_COPY_TOKENS = """
INSERT INTO tokens ({columns}, connection_id)
SELECT {columns}, t.connection_id + g * :span
FROM tokens t CROSS JOIN generate_series(1, :copies) AS g WHERE t.connection_id <= :span
"""
_COPY_AUDIT = """
INSERT INTO audit_events ({columns}, connection_id)
SELECT {columns}, e.connection_id + g * :span
FROM audit_events e CROSS JOIN generate_series(1, :copies) AS g
WHERE e.connection_id IS NOT NULL AND e.connection_id <= :span
"""
_COPY_TAGS = """
INSERT INTO connection_tags (connection_id, tag)
SELECT t.connection_id + g * :span, t.tag
FROM connection_tags t CROSS JOIN generate_series(1, :copies) AS g WHERE t.connection_id <= :span
"""


def _grow(app) -> float:
    """Copy the seeded rows until there are LARGE connections; the seconds it took."""
    started = time.perf_counter()
    with app.app_context():
        span = db.session.scalar(text("SELECT max(id) FROM connections"))
        params = {"span": span, "copies": LARGE // SMALL - 1}

        def columns(table: str, leave: set[str]) -> str:
            names = db.session.scalars(text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
                "ORDER BY ordinal_position"), {"t": table}).all()
            return ", ".join(name for name in names if name not in leave | {"id"})

        connection_columns = columns("connections", {"account_subject", "account_email"})
        db.session.execute(text(_COPY_CONNECTIONS.format(columns=connection_columns)), params)
        db.session.execute(text("SELECT setval(pg_get_serial_sequence('connections', 'id'), "
                                "(SELECT max(id) FROM connections))"))
        db.session.execute(text(_COPY_TOKENS.format(
            columns=columns("tokens", {"connection_id"}))), params)
        audit_columns = columns("audit_events", {"connection_id", "chain_seq", "chain_mac",
                                                 "chain_key_id"})
        db.session.execute(text(_COPY_AUDIT.format(columns=audit_columns)), params)
        db.session.execute(text(_COPY_TAGS), params)
        db.session.commit()
        total = db.session.scalar(text("SELECT count(*) FROM connections"))
        assert total == LARGE, total
        _vacuum()
    return time.perf_counter() - started


def _measure(client, paths: dict[str, str]) -> dict[str, float]:
    for path in paths.values():
        assert client.get(path).status_code == 200, path  # templates compiled, caches warm
    functions = {name: (lambda path=path: client.get(path)) for name, path in paths.items()}
    return best_per_call(functions, calls=3, rounds=5)


def main() -> bool:
    with temporary_database() as url, tempfile.TemporaryDirectory() as folder:
        providers = Path(folder) / "providers.toml"
        providers.write_text(PROVIDERS, encoding="utf-8")
        app = bench_app(url, VAULT_PROVIDERS_FILE=str(providers))
        started = time.perf_counter()
        email, password, first = _seed(app)
        print(f"seed-demo --connections {SMALL:,}: {time.perf_counter() - started:.1f} s")
        client = _signed_in_client(app, email, password)
        paths = pages(first)
        small = _measure(client, paths)
        print(f"grown to {LARGE:,} connections by INSERT ... SELECT: {_grow(app):.1f} s")
        large = _measure(client, paths)
        with app.app_context():
            raw = db.engine.raw_connection()
        met = True
        try:
            for name, path in paths.items():
                statements = _capture(app, client, path)
                floor = best_per_call({"healthz": lambda: client.get("/healthz"),
                                       "sql": _bare(raw, statements)}, calls=3, rounds=3)
                ratio = large[name] / small[name]
                met &= ratio <= TARGET
                bare = large[name] / (floor["healthz"] + floor["sql"])
                print(f"{name:<12} {path[:34]:<34} {SMALL // 1000}k {small[name] * 1000:6.2f} ms"
                      f" | {LARGE // 1000}k {large[name] * 1000:6.2f} ms | ratio {ratio:4.2f} "
                      f"(target <= {TARGET:g}) {verdict(ratio <= TARGET):<6} | "
                      f"{len(statements)} statements, page / (healthz + bare SQL) {bare:4.2f}")
        finally:
            raw.close()
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
    return met
