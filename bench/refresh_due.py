"""`vault refresh-due` with --concurrency 16 against --concurrency 1, on PostgreSQL, one run.

The provider stand-in (tests/support/provider_stub.py, in a process of its own) answers every token
request after 50 ms and rotates the refresh token. The command runs in-process through
Flask's CLI runner, exactly as `flask --app app vault refresh-due` would. The concurrent run
covers 1,000 due connections; the serial one fewer (it would take a minute otherwise), so
the two are compared by connections refreshed per second. Target (issue 5): >= 8x.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select, text

from tests.support.databases import bench_app, temporary_database
from bench.timing import verdict
from tests.support.provider_stub import providers_toml, serve
from vault.extensions import db
from vault.models import AuditEvent, Connection, Token, token_aad, utcnow
from vault.tokens.store import token_vault

CONNECTIONS = int(os.environ.get("BENCH_REFRESH_CONNECTIONS", 1000))
SERIAL_CONNECTIONS = int(os.environ.get("BENCH_REFRESH_SERIAL_CONNECTIONS", 150))
PROVIDER_DELAY = 0.05
TARGET = 8


def _seed(count: int) -> None:
    """``count`` active connections whose access token expires in a minute."""
    db.session.execute(delete(AuditEvent))
    db.session.execute(delete(Connection))
    db.session.execute(insert(Connection), [
        {"provider": "bench", "account_subject": f"bench-{n}", "scopes_requested": "",
         "scopes_granted": "", "status": "active", "failure_count": 0}
        for n in range(count)
    ])
    cipher, expires_at = token_vault.cipher, utcnow() + timedelta(seconds=60)
    rows = []
    for connection_id in db.session.scalars(select(Connection.id)):
        for kind, value in (("access", "at-old-" + secrets.token_urlsafe(16)),
                            ("refresh", "rt-bench-" + secrets.token_urlsafe(16))):
            rows.append({
                "connection_id": connection_id, "kind": kind, "key_id": cipher.current_key_id,
                "is_valid": True, "expires_at": expires_at if kind == "access" else None,
                "ciphertext": cipher.encrypt(value, aad=token_aad(connection_id, kind)),
            })
    db.session.execute(insert(Token), rows)
    db.session.commit()
    # Planner statistics as autovacuum would have them for tables this size: without them
    # PostgreSQL guesses one row per index and may sort every due connection per claim
    # instead of walking the access tokens by expiry.
    db.session.execute(text("ANALYZE connections"))
    db.session.execute(text("ANALYZE tokens"))
    db.session.commit()


def _refresh_rate(app, count: int, concurrency: int) -> float:
    """Connections refreshed per second by one `vault refresh-due` run over ``count``."""
    _seed(count)
    runner = app.test_cli_runner()
    started = time.perf_counter()
    arguments = ["vault", "refresh-due", "--concurrency", str(concurrency), "--json"]
    result = runner.invoke(args=arguments)
    seconds = time.perf_counter() - started
    report = json.loads(result.output)
    if result.exit_code != 0 or report["refreshed"] != count:
        raise RuntimeError(f"refresh-due did not refresh everything: {result.output[:500]}")
    print(f"--concurrency {concurrency:2}: {count:5} connections in {seconds:6.2f} s "
          f"= {count / seconds:7.1f} connections/s")
    return count / seconds


def main() -> bool:
    context = multiprocessing.get_context("spawn")
    queue, stop = context.Queue(), context.Event()
    provider = context.Process(
        target=serve, args=(queue, stop), kwargs={"delay": PROVIDER_DELAY, "strict": False}
    )
    provider.start()
    try:
        base_url = queue.get(timeout=60)
        with temporary_database() as url, tempfile.TemporaryDirectory() as folder:
            providers = Path(folder) / "providers.toml"
            providers.write_text(providers_toml("bench", base_url), encoding="utf-8")
            app = bench_app(url, VAULT_PROVIDERS_FILE=str(providers))
            with app.app_context():
                parallel = _refresh_rate(app, CONNECTIONS, 16)
                serial = _refresh_rate(app, SERIAL_CONNECTIONS, 1)
                db.session.remove()
                db.engine.dispose()
    finally:
        stop.set()
        provider.join(timeout=10)
    speedup = parallel / serial
    print(f"(provider answers in {PROVIDER_DELAY * 1000:.0f} ms; the serial run covers "
          f"{SERIAL_CONNECTIONS} connections, so rates are compared)")
    print(f"speed-up of --concurrency 16 over 1: {speedup:5.1f}x (target >= {TARGET}x)  "
          f"{verdict(speedup >= TARGET)}")
    return speedup >= TARGET
