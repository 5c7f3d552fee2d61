"""``expires_in``: read in one place (:mod:`vault.oauth.lifetimes`), so Connect and refresh agree.

RFC 6749 section 5.1: the lifetime in seconds of the access token. A positive number (or
numeric string) counts from now; zero, a negative, absurd or unreadable value is not a
lifetime, so the expiry is unknown (None), and the token is handed out as it is rather
than treated as expired and refreshed on every request.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import current_app
from sqlalchemy import select

from tests.support.builders import make_user, post_form
from tests.support.oidc_stub import OIDCStub
from tests.support.refresh_fixtures import both_backends, load, make_connection
from vault.extensions import db as _db
from vault.models import Connection, TokenKind
from vault.oauth.lifetimes import lifetime_end
from vault.refresh.engine import Outcome, refresh_now
from vault.services import service_keys
from vault.services.connections import Account, record_grant
from vault.tokens.store import token_vault

# The shared refresh fixtures, bound here so pytest finds them by name (no star import).
pytestmark = pytest.mark.shared_postgres_database

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
UNKNOWN = None
OMITTED = "omitted"
@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [
        (3600, 3600),
        ("3600", 3600),
        (3600.7, 3600),  # whole seconds
        (1, 1),
        (0, UNKNOWN),  # not "expired now": the provider did not say
        (-5, UNKNOWN),
        (None, UNKNOWN),
        ("", UNKNOWN),
        ("abc", UNKNOWN),
        ([3600], UNKNOWN),
        (True, UNKNOWN),  # a JSON true is not the number 1
        (False, UNKNOWN),
        (1e30, UNKNOWN),  # beyond any date
        (10**30, UNKNOWN),
        (10**400, UNKNOWN),  # a JSON integer float() cannot hold
        (float("nan"), UNKNOWN),
        (float("inf"), UNKNOWN),
        (float("-inf"), UNKNOWN),
        ("nan", UNKNOWN),
        ("Infinity", UNKNOWN),
    ],
    ids=repr,
)
def test_lifetime_end(expires_in, seconds):
    expected = UNKNOWN if seconds is None else NOW + timedelta(seconds=seconds)
    assert lifetime_end(NOW, expires_in) == expected


# -- end to end: the same answer stored alike by Connect and by a refresh ---------------------


@pytest.fixture
def oidc():
    """An OpenID Connect provider on loopback that does the code flow and refreshes."""
    with OIDCStub() as running:
        yield running


@pytest.fixture
def oidc_provider(stub_config, providers_file, oidc):
    """The refresh stub's providers, and [oidc] for the code flow."""
    providers_file.write_text(
        providers_file.read_text()
        + "[oidc]\n"
        'type = "oidc"\n'
        f'server_metadata_url = "{oidc.discovery_url}"\n'
        f'client_id = "{oidc.client_id}"\nclient_secret = "{oidc.client_secret}"\n'
        'scope = "openid email profile offline_access"\n',
        encoding="utf-8",
    )


@pytest.fixture
def vault_app(oidc_provider, app):
    """The app, its providers file written before it starts; the test runs in its context."""
    return app


def lifetime(connection_id: int) -> timedelta | None:
    """The stored access token's lifetime: its expiry less the moment it was stored.

    Connect and refresh both compute the expiry from the ``now`` they record as
    ``last_refreshed_at``, so this is exact, with no clock to freeze.
    """
    connection = load(connection_id)
    expires_at = token_vault.token(connection, TokenKind.ACCESS).expires_at
    return None if expires_at is None else expires_at - connection.last_refreshed_at


def said(response) -> str:
    """The error a failure page shows, not the whole page."""
    found = re.search(r'role="alert">(.*?)<', response.get_data(as_text=True), re.S)
    return html.unescape(found.group(1)) if found else str(response.status_code)


def connect_through_the_browser_flow(client, oidc) -> int:
    """Connect [oidc] as an admin would: consent at the provider, back to the callback."""
    response = post_form(client, "/connect/oidc")
    assert response.status_code == 302, said(response)
    params = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    callback = urlsplit(oidc.authorize(params))
    response = client.get(f"{callback.path}?{callback.query}")
    assert response.status_code == 302, said(response)
    return _db.session.scalar(select(Connection.id).where(Connection.provider == "oidc"))


def refreshed(connection_id: int) -> int:
    result = refresh_now(load(connection_id), "system")
    assert result.outcome is Outcome.REFRESHED, result.message
    return connection_id


def expected_lifetime(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


@both_backends
@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [
        (3600, 3600), (3600.7, 3600), (0, UNKNOWN), (-5, UNKNOWN), (OMITTED, UNKNOWN),
        (1e30, UNKNOWN),
        (float("nan"), UNKNOWN),
        (float("inf"), UNKNOWN),
    ],
    ids=repr,
)
def test_connect_and_refresh_store_the_same_expiry(vault_app, admin_client, oidc, expires_in,
                                                   seconds):
    if expires_in == OMITTED:
        oidc.behaviour.omit_expires_in = True
    else:
        oidc.behaviour.expires_in = expires_in
    connection_id = connect_through_the_browser_flow(admin_client, oidc)
    connected = lifetime(connection_id)
    assert (connected, lifetime(refreshed(connection_id))) == (expected_lifetime(seconds),) * 2


# The OIDC stand-in answers numbers only; strings come from the refresh stub, and Connect's
# side is record_grant given the answer as the callback hands it over.
@both_backends
@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [
        ("3600", 3600),
        ("abc", UNKNOWN),
        ("3600.7", 3600),
    ],
    ids=repr,
)
def test_record_grant_and_refresh_read_strings_alike(vault_app, db, stub, expires_in, seconds):
    answer = {"access_token": "at-connect", "refresh_token": "rt-connect",
              "token_type": "Bearer", "expires_in": expires_in}
    user = make_user("admin@example.com", role="admin")
    provider = current_app.extensions["providers"].get("acme")
    connection, _ = record_grant(provider, answer, Account("connected", None, None), user)
    db.session.commit()
    connected = lifetime(connection.id)

    stub.expires_in = expires_in
    renewed = lifetime(refreshed(make_connection(stub, subject="refreshed", expires_in=60)))
    assert (connected, renewed) == (expected_lifetime(seconds),) * 2


@both_backends
def test_an_unknown_expiry_is_handed_out_without_another_refresh(vault_app, db, stub, client):
    # expires_in 0 once meant "expires now" on the refresh path: every request refreshed.
    stub.expires_in = 0
    connection_id = refreshed(make_connection(stub, expires_in=60))
    _, key = service_keys.create_key("reader", [], set())
    db.session.commit()
    for _ in range(3):
        response = client.get(f"/api/v1/connections/{connection_id}/access-token",
                              headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200 and response.json["expires_at"] is None
    assert stub.count() == 1  # the refresh above, and no other
