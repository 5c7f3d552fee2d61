"""GET /api/v1/connections/<id>/access-token under gunicorn against a bare endpoint, one run.

Both run under gunicorn (2 workers x 4 threads, ``--reuse-port``) on one PostgreSQL database
and are loaded by the same generator (wrk when installed, else Python threads with keep-alive
connections), alternately, best of five rounds each. ``--reuse-port`` gives each worker a
listening socket of its own, so the kernel spreads the keep-alive connections over both:
without it, one worker often won most of them at the start of a round, left the other idle
and made a round's figure a matter of luck (bare endpoint 900 or 2,000 requests/s). The bare endpoint is a minimal Flask app that checks
the same service key with the same code and answers constant JSON; the real one also reads
the connection and its token, decrypts the token and writes the hand-out's audit row before
answering (on PostgreSQL in one statement: vault/services/handout.py; its commit does not
wait for the disk unless VAULT_HANDOUT_COMMIT=durable, set in the environment to measure
that). Target (issue 18):
>= 80% of the bare endpoint's throughput; p50 and p99 latency of both are reported too (the
median over the rounds, from wrk's latency distribution or the Python clients' own timings).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple
from datetime import timedelta
from pathlib import Path

from flask import Flask, jsonify, request

from tests.support.databases import bench_app, temporary_database
from bench.timing import verdict
from vault.services import service_keys
from vault.config import database_url
from vault.extensions import db
from vault.models import Connection, TokenKind, utcnow
from vault.tokens.store import token_vault

ROUNDS, SECONDS, CONNECTIONS = 5, 4, 16
TARGET = 0.8
GUNICORN = ["--workers", "2", "--threads", "4", "--worker-class", "gthread", "--reuse-port",
            "--log-level", "warning"]

PROVIDERS_FILE = """
[bench]
type = "oauth2"
client_id = "bench"
client_secret = "bench-secret"
authorize_url = "https://bench.invalid/authorize"
token_url = "https://bench.invalid/token"
"""


def vault_app() -> Flask:
    """The real app (gunicorn ``bench.api:vault_app()``), configured from the environment."""
    from vault import create_app

    return create_app()


def bare_app() -> Flask:
    """The reference (gunicorn ``bench.api:bare_app()``): key check, constant answer."""
    app = Flask("bare")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(os.environ["DATABASE_URL"])
    db.init_app(app)

    @app.get("/bare")
    def bare():
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or service_keys.authenticate(presented.strip()) is None:
            return jsonify(error="unauthorized"), 401
        return jsonify(access_token="constant", token_type="Bearer", expires_at=None)

    return app


def _seed() -> tuple[int, str]:
    connection = Connection(provider="bench", account_subject="bench-account")
    db.session.add(connection)
    db.session.flush()
    token_vault.store(connection, TokenKind.ACCESS, "ya29." + secrets.token_urlsafe(120),
                      expires_at=utcnow() + timedelta(hours=2))
    _, key = service_keys.create_key("bench", [], set())
    db.session.commit()
    return connection.id, key


@contextlib.contextmanager
def _gunicorn(target: str, env: dict[str, str]) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "gunicorn", *GUNICORN, "--bind", f"127.0.0.1:{port}", target]
    server = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"gunicorn {target} did not start")
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: the figures are in, stop it
            server.kill()
            server.wait()


class Round(NamedTuple):
    """One load round: successful requests per second, and p50 / p99 latency in seconds."""

    rate: float
    p50: float
    p99: float


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _load(port: int, path: str, key: str) -> Round:
    """Load ``path`` for SECONDS seconds over CONNECTIONS keep-alive connections."""
    if shutil.which("wrk"):
        output = subprocess.run(
            ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency",
             "-H", f"Authorization: Bearer {key}", f"http://127.0.0.1:{port}{path}"],
            check=True, capture_output=True, text=True,
        ).stdout
        if "Non-2xx" in output:
            raise RuntimeError(f"{path} answered errors under load:\n{output}")

        def percentile(share: str) -> float:
            value, unit = re.search(rf"^\s+{share}%\s+([\d.]+)(us|ms|s|m)\s*$", output,
                                    re.MULTILINE).groups()
            return float(value) * _UNITS[unit]

        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
        return Round(rate, percentile("50"), percentile("99"))
    return _python_load(port, path, key)


def _python_load(port: int, path: str, key: str) -> Round:
    timings: list[list[float]] = [[] for _ in range(CONNECTIONS)]
    stop = time.monotonic() + SECONDS

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        while time.monotonic() < stop:
            started = time.perf_counter()
            connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status} under load")
            timings[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = sorted(seconds for own in timings for seconds in own)
    cuts = statistics.quantiles(latencies, n=100)
    return Round(len(latencies) / SECONDS, cuts[49], cuts[98])


def main() -> bool:
    secret, session_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with temporary_database() as url, tempfile.TemporaryDirectory() as folder:
        # The connection's provider must be configured: the API hands out nothing for one
        # that has left the providers file. Its endpoints are never called (the token is fresh).
        providers = Path(folder) / "providers.toml"
        providers.write_text(PROVIDERS_FILE, encoding="utf-8")
        app = bench_app(url, ENCRYPTION_SECRET=secret, SECRET_KEY=session_secret,
                        VAULT_PROVIDERS_FILE=str(providers))
        with app.app_context():
            connection_id, key = _seed()
            db.session.remove()
            db.engine.dispose()
        env = {**os.environ, "DATABASE_URL": url, "ENCRYPTION_SECRET": secret,
               "SECRET_KEY": session_secret, "VAULT_PROVIDERS_FILE": str(providers)}
        token_path = f"/api/v1/connections/{connection_id}/access-token"
        rounds = []
        with _gunicorn("bench.api:vault_app()", env) as vault_port, \
                _gunicorn("bench.api:bare_app()", env) as bare_port:
            _load(vault_port, token_path, key)  # warm-up: connections, caches
            _load(bare_port, "/bare", key)
            for _ in range(ROUNDS):
                rounds.append((_load(vault_port, token_path, key), _load(bare_port, "/bare", key)))
    best = {"vault": max(r[0].rate for r in rounds), "bare": max(r[1].rate for r in rounds)}
    share = best["vault"] / best["bare"]
    loader = "wrk" if shutil.which("wrk") else "Python threads"
    print(f"load: {loader}, {CONNECTIONS} keep-alive connections, {SECONDS} s x {ROUNDS} rounds, "
          f"best round; gunicorn {' '.join(GUNICORN[:7])}")
    # A round a starved machine served nothing in says nothing: left out of the median.
    ratios = statistics.median([vault.rate / bare.rate for vault, bare in rounds if bare.rate]
                               or [0.0])
    print("rounds (access-token / bare, requests/s): "
          + ", ".join(f"{vault.rate:.0f}/{bare.rate:.0f}" for vault, bare in rounds)
          + f"; median of the rounds' ratios {ratios:.0%}")
    labels = {"vault": "GET access-token (fresh token):", "bare": "bare endpoint, same key check: "}
    for side, (name, label) in enumerate(labels.items()):
        served = [r[side] for r in rounds if r[side].rate] or [Round(0.0, 0.0, 0.0)]
        p50 = statistics.median(r.p50 for r in served) * 1000
        p99 = statistics.median(r.p99 for r in served) * 1000
        print(f"{label} {best[name]:8.0f} requests/s, p50 {p50:6.2f} ms, p99 {p99:6.2f} ms")
    print(f"access-token / bare: {share:6.0%} (target >= {TARGET:.0%})  {verdict(share >= TARGET)}")
    return share >= TARGET
