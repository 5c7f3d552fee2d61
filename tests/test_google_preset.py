"""The google preset: its authorize parameters, and Google-shaped token and id_token answers.

Google itself cannot be reached from here; the stand-in serves the responses Google
documents (long scope names, ``iss`` in the redirect without advertising it, no
``authorization_response_iss_parameter_supported``).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.support.connect_flow import ADMIN_EMAIL, begin, finish, sign_in
from tests.support.oidc_stub import OIDCStub
from vault.models import Connection
from vault.providers.registry import PRESETS
from vault.tokens.store import token_vault


@pytest.fixture
def admin_client(client, users):
    """``client`` itself, signed in as the admin of ``users``, as in tests/test_connect.py."""
    sign_in(client, ADMIN_EMAIL)
    return client


@pytest.fixture
def google():
    with OIDCStub(client_id="1234-abc.apps.googleusercontent.com", google=True) as stub:
        yield stub


@pytest.fixture
def app_config(app_config, providers_file, google):
    providers_file.write_text(f"""
[google]
preset = "google"
client_id = "{google.client_id}"
client_secret = "${{GOOGLE_TEST_SECRET}}"
scope = "openid email profile https://www.googleapis.com/auth/calendar.readonly"
# Only for the test: the stand-in instead of accounts.google.com
server_metadata_url = "{google.discovery_url}"
revocation_endpoint = "{google.issuer}/revoke"
""")
    return app_config


@pytest.fixture(autouse=True)
def google_secret(monkeypatch, google):
    monkeypatch.setenv("GOOGLE_TEST_SECRET", google.client_secret)


def test_preset_points_at_google():
    preset = PRESETS["google"]
    assert preset["server_metadata_url"] == "https://accounts.google.com/.well-known/openid-configuration"
    assert preset["revocation_endpoint"] == "https://oauth2.googleapis.com/revoke"


def test_authorize_url_carries_googles_offline_parameters(admin_client, google):
    params = begin(admin_client, "google")
    assert params["_base"] == "/authorize"
    assert params["access_type"] == "offline"
    assert params["prompt"] == "consent"
    assert params["include_granted_scopes"] == "true"
    assert params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256"
    assert params["nonce"] and params["state"]
    assert params["scope"] == "openid email profile https://www.googleapis.com/auth/calendar.readonly"
    assert params["redirect_uri"] == "http://localhost/connect/google/callback"


def test_google_answers_are_stored_and_long_scope_names_count_as_granted(admin_client, google, db):
    response = finish(admin_client, google.authorize(begin(admin_client, "google")))
    assert response.status_code == 302
    connection = db.session.scalars(select(Connection)).one()
    assert connection.account_email == "ops@example.com"
    assert "https://www.googleapis.com/auth/userinfo.email" in connection.scopes_granted
    assert token_vault.get(connection, "refresh") == google.issued[-1]["refresh_token"]
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "fewer scopes" not in page


def test_google_declining_a_scope_is_reported(admin_client, google, db):
    google.behaviour.granted_scope = "openid email profile"
    response = finish(admin_client, google.authorize(begin(admin_client, "google")))
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "fewer scopes than asked" in page and "calendar.readonly" in page
