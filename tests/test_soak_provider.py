"""The soak test's provider stand-in: rotation, reuse detection, 503s, and its verdicts."""

from __future__ import annotations

import time

import requests

from tests.support.provider_stub import CLIENT_ID, CLIENT_SECRET
from tests.support.soak_provider import SoakProvider


def refresh(provider: SoakProvider, refresh_token: str) -> requests.Response:
    return requests.post(f"{provider.base_url}/token", auth=(CLIENT_ID, CLIENT_SECRET),
                         data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                         timeout=10)


def test_a_refresh_token_presented_twice_revokes_the_grant():
    with SoakProvider(delay=0, failure_rate=0) as provider:
        first_access, first_refresh, _ = provider.new_grant()
        answer = refresh(provider, first_refresh)
        assert answer.status_code == 200
        second_access, second_refresh = answer.json()["access_token"], answer.json()[
            "refresh_token"]
        assert second_refresh != first_refresh
        assert provider.problem(second_access, time.time()) is None
        assert provider.problem(first_access, time.time()) is None  # valid until it expires

        reused = refresh(provider, first_refresh)
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        assert provider.reused == 1
        assert refresh(provider, second_refresh).status_code == 400  # the whole grant
        assert provider.refused == 1
        assert "revoked" in provider.problem(second_access, time.time())


def test_unknown_tokens_expiry_and_failures_are_told_apart():
    with SoakProvider(delay=0, failure_rate=1.0) as provider:
        access, refresh_token, expires_at = provider.new_grant(expires_in=60)
        assert provider.problem("at-never-issued", time.time()) == "never issued"
        assert "expired" in provider.problem(access, expires_at + 1)
        unavailable = refresh(provider, refresh_token)
        assert unavailable.status_code == 503 and provider.unavailable == 1
        assert provider.refreshed == 0 and provider.reused == 0
        wrong_client = requests.post(f"{provider.base_url}/token", auth=(CLIENT_ID, "wrong"),
                                     data={"grant_type": "refresh_token",
                                           "refresh_token": refresh_token}, timeout=10)
        assert wrong_client.status_code == 401
