"""What `make run` does on a fresh machine: secrets once, schema, first admin, a server."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.request

from vault import PROJECT_ROOT
from vault.devenv import ensure_dev_secrets


def test_dev_secrets_are_generated_once_and_never_overwritten(tmp_path, monkeypatch):
    for name in ("SECRET_KEY", "ENCRYPTION_SECRET"):
        monkeypatch.delenv(name, raising=False)
    instance = tmp_path / "instance"
    assert ensure_dev_secrets(instance, tmp_path) == ["SECRET_KEY", "ENCRYPTION_SECRET"]
    first = (instance / ".env").read_text()
    assert stat.S_IMODE((instance / ".env").stat().st_mode) == 0o600
    assert ensure_dev_secrets(instance, tmp_path) == []
    assert (instance / ".env").read_text() == first
    values = dict(line.split("=", 1) for line in first.splitlines())
    assert len(values["ENCRYPTION_SECRET"]) >= 32 and len(values["SECRET_KEY"]) >= 32
    assert values["ENCRYPTION_SECRET"] != values["SECRET_KEY"]


def test_dev_secrets_respect_values_already_set(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "k" * 40)
    monkeypatch.delenv("ENCRYPTION_SECRET", raising=False)
    assert ensure_dev_secrets(tmp_path / "instance", tmp_path) == ["ENCRYPTION_SECRET"]
    assert "SECRET_KEY" not in (tmp_path / "instance" / ".env").read_text()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_first_run_sequence_serves_a_working_app(tmp_path):
    env = {
        **os.environ,
        "SECRET_KEY": "first-run-secret-key-0123456789abcdef",
        "ENCRYPTION_SECRET": "first-run-encryption-secret-0123456789",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'vault.db'}",
        "VAULT_PROVIDERS_FILE": str(tmp_path / "providers.toml"),
    }
    (tmp_path / "providers.toml").write_text("")
    flask = [sys.executable, "-m", "flask", "--app", "app"]

    def run(*args):
        return subprocess.run(
            [*flask, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
            timeout=120, check=True,
        )

    run("db", "upgrade")
    created = run("users", "create-first-admin").stdout
    assert "admin@localhost" in created
    assert re.search(r"password: \S{20,}", created)
    assert "exist already" in run("users", "create-first-admin").stdout

    port = _free_port()
    server = subprocess.Popen(
        [*flask, "run", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    body = answer.read().decode()
                    break
            except OSError:
                time.sleep(0.1)
        assert body is not None and '"database":"ok"' in body.replace(" ", "")
    finally:
        server.terminate()
        server.wait(timeout=10)
