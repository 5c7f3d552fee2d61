"""Sign-in throttling across processes: two gunicorn instances (4 and 2 worker processes) on one
PostgreSQL database share one count, so 40 parallel wrong passwords for one e-mail get only
the allowance of 10 checked, wherever they land; the rest are answered 429 without a check.

Each attempt comes from an address of its own (through a trusted proxy's X-Forwarded-For), so
the per-e-mail counter is the one that must hold.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import create_engine, func, select

from tests.support.gunicorn import Gunicorn, migrated_app
from vault.extensions import db
from vault.models import AuditEvent, ThrottleCounter
from vault.services import accounts

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

EMAIL, PASSWORD, WRONG = "admin@example.com", "Correct-Horse-Battery-42", "Wrong-Password-000"
ATTEMPTS, ALLOWANCE = 40, 10
SESSION_COOKIE = "__Host-session"
_CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@pytest.fixture
def environment(postgres_url, tmp_path) -> dict[str, str]:
    """The instances' environment, on a migrated database of their own with one admin."""
    providers = tmp_path / "providers.toml"
    providers.write_text("", encoding="utf-8")
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "SECRET_KEY": "throttle-gunicorn-secret-key-0123456789",
        "ENCRYPTION_SECRET": "throttle-gunicorn-encryption-secret-01234",
        "VAULT_PROVIDERS_FILE": str(providers),
        "VAULT_TRUSTED_PROXIES": "1",  # each attempt's address from X-Forwarded-For
    }
    app = migrated_app(env)
    with app.app_context():
        accounts.create_user(EMAIL, "admin", PASSWORD)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return env


def _prepared_attempt(instance: Gunicorn, address: str):
    """A browser's sign-in form at ``instance``, ready to send a wrong password."""
    headers = {"X-Forwarded-For": address}
    page = requests.get(f"{instance.url}/login", headers=headers, timeout=30)
    # The session cookie is Secure; requests keeps such cookies off plain http, a browser on
    # 127.0.0.1 does not (tests/browser), so it is sent by hand.
    headers["Cookie"] = f"{SESSION_COOKIE}={page.cookies[SESSION_COOKIE]}"
    form = {"email": EMAIL, "password": WRONG,
            "csrf_token": _CSRF_INPUT.search(page.text).group(1)}
    return lambda: requests.post(f"{instance.url}/login", data=form, headers=headers,
                                 allow_redirects=False, timeout=60)


def test_40_parallel_wrong_passwords_over_two_instances_get_10_checks(environment, postgres_url):
    instances = [Gunicorn(environment, workers=4), Gunicorn(environment, workers=2)]
    try:
        attempts = [_prepared_attempt(instances[number % 2], f"10.40.0.{number + 1}")
                    for number in range(ATTEMPTS)]
        barrier = threading.Barrier(ATTEMPTS)

        def send(attempt):
            barrier.wait(timeout=60)
            return attempt()

        with ThreadPoolExecutor(ATTEMPTS) as pool:
            answers = list(pool.map(send, attempts))
    finally:
        for instance in instances:
            instance.stop()

    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {200: ALLOWANCE, 429: ATTEMPTS - ALLOWANCE}, statuses
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 429)
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            checked = connection.scalar(  # one row per password checked and found wrong
                select(func.count()).where(AuditEvent.action == "auth.sign_in_failed"))
            counted = connection.scalar(
                select(ThrottleCounter.hits).where(ThrottleCounter.scope == "sign-in:email"))
    finally:
        engine.dispose()
    assert checked == ALLOWANCE
    assert counted == ALLOWANCE
