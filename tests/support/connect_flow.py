"""The Connect tests' staff users, sign-in and authorization round trip (shared helpers).

A pytest plugin: ``tests/conftest.py`` registers it in ``pytest_plugins``, so its fixture
``users`` (an admin and a viewer with ``PASSWORD``) is found by name in every test module.
The helpers are imported by name: ``sign_in(client, email)`` signs a test client in through
the form; ``begin(client, provider)`` starts a Connect and returns the authorize URL's query
parameters (and its path as ``_base``); ``finish(client, url)`` follows the provider's
redirect back to the callback.

These are not the conftest's ``admin_user``/``admin_client`` (tests/support/builders.py): a
module that signs in with these overrides ``admin_client`` itself, to sign in ``client``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

ADMIN_EMAIL, VIEWER_EMAIL = "admin@example.com", "viewer@example.com"
PASSWORD = "correct horse battery"


def csrf_token(client, path="/login") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)


def sign_in(client, email: str) -> None:
    response = client.post("/login", data={
        "email": email, "password": PASSWORD, "csrf_token": csrf_token(client)})
    assert response.status_code == 302, response.get_data(as_text=True)


@pytest.fixture
def users(app, db):
    """An admin (``ADMIN_EMAIL``) and a viewer (``VIEWER_EMAIL``), both with ``PASSWORD``."""
    from vault.services.accounts import create_user

    admin = create_user(ADMIN_EMAIL, "admin", PASSWORD)
    viewer = create_user(VIEWER_EMAIL, "viewer", PASSWORD)
    db.session.commit()
    return admin, viewer


def begin(client, provider="stub") -> dict[str, str]:
    response = client.post(f"/connect/{provider}", data={"csrf_token": csrf_token(client, "/")})
    assert response.status_code == 302, response.get_data(as_text=True)
    location = urlsplit(response.headers["Location"])
    return {k: v[0] for k, v in parse_qs(location.query).items()} | {"_base": location.path}


def finish(client, url: str):
    parts = urlsplit(url)
    return client.get(f"{parts.path}?{parts.query}")
