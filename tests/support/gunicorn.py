"""``gunicorn app:app`` in a subprocess on a free loopback port, for tests across processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from flask import Flask

from vault import create_app

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What create_app needs of the instances' environment, to prepare their database in-process.
APP_SETTINGS = ("DATABASE_URL", "SECRET_KEY", "ENCRYPTION_SECRET", "VAULT_PROVIDERS_FILE")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def migrated_app(env: dict[str, str]) -> Flask:
    """``flask db upgrade`` on ``env``'s database, then an app on it to add rows with."""
    migrated = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    return create_app({key: env[key] for key in APP_SETTINGS})


class Gunicorn:
    """One instance of the app, ``workers`` processes of ``threads`` threads, serving once
    the constructor returns (``/healthz`` answered 200)."""

    def __init__(self, env: dict[str, str], *, workers: int = 2, threads: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers),
             "--threads", str(threads), "--bind", f"127.0.0.1:{self.port}",
             "--timeout", "60", "app:app"],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not start")

    def stop(self) -> None:
        """Terminate the instance and wait for it."""
        self.process.terminate()
        self.process.wait(timeout=30)
