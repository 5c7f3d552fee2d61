"""Scale-out: two gunicorn instances and two `vault refresh-due` loops share one PostgreSQL.

The provider stand-in rotates the refresh token on every use and rejects a reused one, so a
refresh done twice, or a rotated token lost, shows up as a rejection or a broken connection.
Midway the database is stopped and started again: requests must fail cleanly (JSON, no
half-written rows) during the outage and succeed after it. The cluster is this test's own,
so restarting it disturbs no other test.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pytest
import requests
from sqlalchemy import create_engine, select, text

from tests.support.google_token_stub import SCOPES, GoogleTokenStub
from tests.support.gunicorn import Gunicorn, free_port
from tests.support.provider_stub import ProviderStub
from vault import PROJECT_ROOT, create_app
from vault.extensions import db
from vault.models import Connection, TokenKind, utcnow
from vault.oauth.service_accounts import parse_key_file, stored_value
from vault.services.service_keys import create_key
from vault.tokens.store import token_vault

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CONNECTIONS = 5
CYCLES = 200
OUTAGE_AT = CYCLES // 2


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true requires the scale-out test)")
    pytest.skip(reason)


@dataclass
class Cluster:
    """A private PostgreSQL cluster: ``url`` to its database, ``stop()`` / ``start()``."""

    port: int
    control: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/vault"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.control, *args], check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def start(self) -> None:
        self._ctl("start")


@pytest.fixture
def cluster():
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    bindir = os.path.dirname(binaries[-1])
    base = tempfile.mkdtemp(prefix="tokenvault-pg-")
    as_postgres = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(base, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(base, "data")
    subprocess.run([*as_postgres, f"{bindir}/initdb", "-D", data, "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    control = [*as_postgres, f"{bindir}/pg_ctl", "-D", data, "-l", f"{base}/log", "-w",
               "-o", options]
    running = Cluster(port, control)
    running.start()
    subprocess.run([*as_postgres, f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port),
                    "-U", "postgres", "vault"], check=True, capture_output=True, timeout=60)
    yield running
    subprocess.run([*control, "stop", "-m", "immediate"], capture_output=True, timeout=60)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def environment(cluster, tmp_path):
    stub = ProviderStub().__enter__()
    providers = tmp_path / "providers.toml"
    providers.write_text(stub.providers_toml("acme"))
    env = {
        **os.environ,
        "DATABASE_URL": cluster.url,
        "SECRET_KEY": "scale-out-secret-key-0123456789abcdef",
        "ENCRYPTION_SECRET": "scale-out-encryption-secret-0123456789",
        "VAULT_PROVIDERS_FILE": str(providers),
        "VAULT_PROVIDER_TIMEOUT_SECONDS": "5",
    }
    yield env, stub
    stub.__exit__(None, None, None)


@pytest.fixture
def google(environment):
    """A Google service account beside the OAuth connections (issue 16): its stored key
    file is renewed by signing assertions, through the same row locks and API."""
    env, _stub = environment
    with GoogleTokenStub(expires_in=30) as google:
        with open(env["VAULT_PROVIDERS_FILE"], "a", encoding="utf-8") as providers:
            providers.write(f'\n[{SERVICE_ACCOUNT}]\npreset = "google_service_account"\n'
                            f'token_url = "{google.token_url}"\nscope = "{SCOPES[0]}"\n')
        yield google


SERVICE_ACCOUNT = "robots"


def _add_service_account(app, google) -> int:
    key = parse_key_file(json.dumps(google.create_key("robot@scale.iam.gserviceaccount.com"))
                         .encode())
    with app.app_context():
        connection = Connection(provider=SERVICE_ACCOUNT, account_subject=key.client_email,
                                scopes_requested=SCOPES[0], credential_key_id=key.private_key_id)
        db.session.add(connection)
        db.session.flush()
        token_vault.store(connection, TokenKind.PRIVATE_KEY, stored_value(key, None))
        token_vault.store(connection, TokenKind.ACCESS, "ya29.initial",
                          expires_at=utcnow() - timedelta(seconds=1))
        db.session.commit()
        connection_id = connection.id
        db.session.remove()
        db.engine.dispose()
    return connection_id


def _flask(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _prepare(env, stub) -> tuple[object, str, list[int]]:
    migrated = _flask(env, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    app = create_app({key: env[key] for key in (
        "DATABASE_URL", "SECRET_KEY", "ENCRYPTION_SECRET", "VAULT_PROVIDERS_FILE")})
    with app.app_context():
        ids = []
        for number in range(CONNECTIONS):
            connection = Connection(provider="acme", account_subject=f"account-{number}",
                                    account_email=f"account-{number}@example.com")
            db.session.add(connection)
            db.session.flush()
            token_vault.store(connection, "access", f"initial-{number}",
                              expires_at=utcnow() - timedelta(seconds=1))
            token_vault.store(connection, "refresh", stub.issue_refresh_token())
            ids.append(connection.id)
        _row, key = create_key("scale-out", [], {"acme"})
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return app, key, ids


def test_two_instances_and_two_cron_runs_share_one_database(environment, cluster, google):
    env, stub = environment
    app, key, ids = _prepare(env, stub)
    ids.append(_add_service_account(app, google))
    instances = [Gunicorn(env, threads=4), Gunicorn(env, threads=4)]
    engine = create_engine(cluster.url, pool_pre_ping=True)
    stop = threading.Event()
    cron_exits: list[int] = []

    def cron_loop():
        while not stop.is_set():
            cron_exits.append(_flask(env, "vault", "refresh-due", "--within", "60", "--json").returncode)
            stop.wait(0.5)  # cron runs every few minutes; back to back would only burn CPU

    cron = [threading.Thread(target=cron_loop) for _ in range(2)]
    for thread in cron:
        thread.start()

    answers: list[tuple[int, int, dict | None]] = []  # cycle, status, body

    def fetch(cycle: int, instance: Gunicorn, connection_id: int) -> None:
        try:
            response = requests.get(
                f"{instance.url}/api/v1/connections/{connection_id}/access-token",
                headers={"Authorization": f"Bearer {key}"}, timeout=30)
        except requests.RequestException:
            answers.append((cycle, 0, None))
            return
        body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else None
        answers.append((cycle, response.status_code, body))

    outage_cycles: set[int] = set()
    try:
        with ThreadPoolExecutor(max_workers=2 * CONNECTIONS) as pool:
            for cycle in range(CYCLES):
                if cycle == OUTAGE_AT:
                    cluster.stop()
                    outage_cycles.add(cycle)
                    list(pool.map(lambda args: fetch(*args),
                                  [(cycle, i, c) for i in instances for c in ids]))
                    cluster.start()
                    continue
                try:
                    with engine.begin() as connection:  # every access token is due again
                        connection.execute(text(
                            "UPDATE tokens SET expires_at = now() - interval '1 second' "
                            "WHERE kind = 'access'"))
                except Exception:  # noqa: BLE001 - only right after the restart
                    outage_cycles.add(cycle)
                list(pool.map(lambda args: fetch(*args),
                              [(cycle, i, c) for i in instances for c in ids]))
    finally:
        stop.set()
        for thread in cron:
            thread.join()
        for instance in instances:
            instance.stop()
        engine.dispose()

    issued = set(stub.issued_access_tokens) | {token for _, token in google.accepted}

    def clean_error(status, body) -> bool:
        return status in (500, 503) and bool(body) and "error" in body

    # While the database is down: clean JSON errors, never an HTML page or a hang.
    down = [(status, body) for cycle, status, body in answers if cycle == OUTAGE_AT]
    assert down and all(clean_error(*answer) for answer in down), down[:5]
    # Right after the restart (the cycles whose expiry UPDATE failed), the database comes
    # back while the cycle's requests run: each is a clean error or an issued token.
    restarting = [(status, body) for cycle, status, body in answers
                  if cycle in outage_cycles and cycle != OUTAGE_AT]
    assert all(clean_error(status, body) or (status == 200 and body["access_token"] in issued)
               for status, body in restarting), restarting[:5]
    # Otherwise every request got a token the provider really issued.
    after = [(status, body) for cycle, status, body in answers if cycle not in outage_cycles]
    assert all(status == 200 for status, _ in after), Counter(status for status, _ in after)
    assert {body["access_token"] for _, body in after} <= issued
    assert any(cycle > OUTAGE_AT and status == 200 for cycle, status, _ in answers)

    # No refresh token was ever presented twice, so no token request was duplicated.
    used = Counter(r["form"].get("refresh_token") for r in stub.requests if r["path"] == "/token")
    assert used and max(used.values()) == 1, [t for t, n in used.items() if n > 1][:3]
    assert stub.count() >= CYCLES - len(outage_cycles)

    # Nothing lost or half-written: every connection active, its newest refresh token live.
    with app.app_context():
        for connection in db.session.scalars(select(Connection)):
            assert connection.status == "active", (connection.id, connection.last_error)
            if connection.provider == SERVICE_ACCOUNT:
                kinds = sorted(token.kind for token in connection.tokens)
                assert kinds == ["access", "private_key"]
                assert token_vault.get(connection, "access") == google.accepted[-1][1]
                continue
            assert sorted(token.kind for token in connection.tokens) == ["access", "refresh"]
            assert token_vault.get(connection, "refresh") in stub.valid_refresh_tokens
        db.session.remove()
        db.engine.dispose()
    verified = _flask(env, "vault", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert cron_exits.count(0) >= 1
