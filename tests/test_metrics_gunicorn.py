"""/metrics under gunicorn: hand-outs served by two worker processes add up in one scrape,
whichever worker answers it (prometheus_client's multiprocess mode, set up by
gunicorn.conf.py)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gunicorn import Gunicorn, migrated_app
from vault.extensions import db
from vault.models import Connection, TokenKind, utcnow
from vault.services import service_keys
from vault.tokens.store import token_vault

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

HANDOUTS, PARALLEL, MAX_ROUNDS = 40, 8, 10
PROVIDERS = """
[acme]
type = "oauth2"
client_id = "acme"
client_secret = "acme-secret"
authorize_url = "https://acme.invalid/authorize"
token_url = "https://acme.invalid/token"
"""


@pytest.fixture
def served(postgres_url, tmp_path):
    """A migrated database with one connection and one service key; the environment."""
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS, encoding="utf-8")
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "SECRET_KEY": "metrics-gunicorn-secret-key-0123456789",
        "ENCRYPTION_SECRET": "metrics-gunicorn-encryption-secret-0123",
        "VAULT_PROVIDERS_FILE": str(providers),
        # Set by the operator here (gunicorn.conf.py makes a temporary one otherwise), so the
        # test can look at each worker's file.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    app = migrated_app(env)
    with app.app_context():
        connection = Connection(provider="acme", account_subject="acct", account_email="a@b.c")
        db.session.add(connection)
        db.session.flush()
        token_vault.store(connection, TokenKind.ACCESS, "at-gunicorn-access-token",
                          expires_at=utcnow() + timedelta(hours=1))
        _, key = service_keys.create_key("billing", [], {"acme"})
        db.session.commit()
        connection_id = connection.id
        db.session.remove()
        db.engine.dispose()
    return env, key, connection_id


def handouts_by_worker(directory: Path) -> dict[str, float]:
    """Each worker's own count of hand-outs, from its file in the multiprocess directory."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        counts[path.stem] = sum(
            value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
            if json.loads(key)[1] == "token_vault_handouts_total"
        )
    return counts


def test_a_scrape_sums_the_hand_outs_of_both_workers(served):
    env, key, connection_id = served
    instance = Gunicorn(env, workers=2)
    try:
        url = f"{instance.url}/api/v1/connections/{connection_id}/access-token"

        def hand_out(_):
            # A connection of its own each time, so both sync workers take requests.
            return requests.get(url, headers={"Authorization": f"Bearer {key}",
                                              "Connection": "close"}, timeout=30)

        # Which worker accepts a connection is the kernel's choice: quick answers can all land
        # on one. Hand out in rounds until both have served some (almost always the first).
        answers: list[requests.Response] = []
        multiproc = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        for _ in range(MAX_ROUNDS):
            with ThreadPoolExecutor(PARALLEL) as pool:
                answers += pool.map(hand_out, range(HANDOUTS))
            if len([n for n in handouts_by_worker(multiproc).values() if n > 0]) == 2:
                break
        scrapes = [requests.get(f"{instance.url}/metrics", timeout=30,
                                headers={"Connection": "close"}) for _ in range(4)]
        refused = requests.get(f"{instance.url}/metrics", timeout=30,
                               headers={"X-Forwarded-For": "203.0.113.9"})
    finally:
        instance.stop()

    assert [a.status_code for a in answers] == [200] * len(answers)
    assert len({a.headers["X-Request-ID"] for a in answers}) == len(answers)
    per_worker = handouts_by_worker(Path(env["PROMETHEUS_MULTIPROC_DIR"]))
    assert len([count for count in per_worker.values() if count > 0]) == 2, per_worker
    assert sum(per_worker.values()) == len(answers)
    for scrape in scrapes:  # whichever worker answered, it reports both workers' counts
        assert scrape.status_code == 200
        [handouts] = [sample.value
                      for family in text_string_to_metric_families(scrape.text)
                      for sample in family.samples
                      if sample.name == "token_vault_handouts_total"]
        assert handouts == len(answers)
        assert "at-gunicorn-access-token" not in scrape.text and key not in scrape.text
        assert 'token_vault_connections{provider="acme",status="active"} 1.0' in scrape.text
    assert refused.status_code == 404
