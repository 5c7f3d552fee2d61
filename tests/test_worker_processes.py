"""The worker and ``make run``'s pair as real processes: signals stop them cleanly, and
nothing is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.support.gated_provider import HOLD_SECONDS, GatedProvider
from tests.support.processes import flask_process, process_environment
from tests.support.refresh_fixtures import load, make_connection
from vault import PROJECT_ROOT
from vault.models import TokenKind
from vault.tokens.store import token_vault


@pytest.fixture
def stub():
    with GatedProvider() as provider:
        yield provider


@pytest.fixture
def stub_config(stub_config):
    # Longer than the gate's ceiling: the held refresh must succeed, not time out.
    stub_config.update(VAULT_PROVIDER_TIMEOUT_SECONDS=HOLD_SECONDS + 10)
    return stub_config


def test_sigterm_lets_the_refresh_in_hand_finish_then_the_worker_exits(vault_app, db, stub,
                                                                        stub_config):
    first = make_connection(stub, subject="first", expires_in=30)
    second = make_connection(stub, subject="second", expires_in=60)
    worker = flask_process(stub_config, "vault", "worker", "--interval", "1")
    lines: list[str] = []
    stopping = threading.Event()

    def read_output():
        for line in worker.stdout:
            lines.append(line)
            if "Worker stopping" in line:
                stopping.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        assert stub.entered.wait(timeout=60), "the worker never called the provider"
        worker.send_signal(signal.SIGTERM)
        # The provider answers only once the worker has taken the signal in.
        assert stopping.wait(timeout=HOLD_SECONDS - 1), "".join(lines)
    finally:
        stub.release.set()
    worker.wait(timeout=60)
    reader.join(timeout=10)
    worker.stdout.close()
    output = "".join(lines)

    assert worker.returncode == 0, output
    assert "Worker stopping after the current item (SIGTERM)" in output
    assert stub.count() == 1  # the second connection was not started
    refreshed = token_vault.get(load(first), TokenKind.ACCESS)
    assert refreshed == stub.issued_access_tokens[0]  # committed before the exit
    assert token_vault.get(load(first), TokenKind.REFRESH) in stub.valid_refresh_tokens
    assert load(second).last_refreshed_at is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_make_runs_pair_starts_both_and_one_signal_stops_both(app, app_config, tmp_path,
                                                              stop_with):
    port = _free_port()
    log = tmp_path / "together.log"
    with log.open("w") as output:
        together = subprocess.Popen(
            [sys.executable, "-m", "vault.worker.together", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=PROJECT_ROOT, env=process_environment(app_config), stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        health = None
        for _ in range(300):  # until the server answers and the worker has run a cycle
            health = _healthz(port)
            if health and health["worker"]["running"] == 1:
                break
            time.sleep(0.1)
        assert health and health["worker"]["running"] == 1, log.read_text()
        pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", log.read_text())]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)

        os.killpg(together.pid, stop_with)  # Ctrl-C in a terminal reaches the whole group
        assert together.wait(timeout=60) == 0, log.read_text()
    finally:
        if together.poll() is None:
            together.kill()
            together.wait()
    assert not any(_alive(pid) for pid in pids), log.read_text()
    assert "Worker stopping after the current item" in log.read_text()
    assert _healthz(port) is None
