"""Test data builders and helpers: staff users and signing in through the real form.

Werkzeug's test client sends cookies back whatever their ``Secure`` flag says (it does not
implement that rule), so signed-in clients work over ``http://localhost`` here. That a real
browser keeps the ``__Host-`` session cookie on http://127.0.0.1 is shown by the Chromium test
in ``tests/browser``; the cookie's attributes are checked in ``tests/test_security.py``.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from vault.extensions import db
from vault.models import User
from vault.services import accounts

DEFAULT_PASSWORD = "Correct-Horse-Battery-42"


def oauth2_provider(key: str, title: str) -> str:
    """A providers-file table for a plain OAuth 2 provider at ``https://<key>.example``."""
    return (f'[{key}]\ntitle = "{title}"\ntype = "oauth2"\nclient_id = "c"\n'
            f'client_secret = "s"\nauthorize_url = "https://{key}.example/authorize"\n'
            f'token_url = "https://{key}.example/token"\n')


# The providers file most tests start from: one OAuth 2 provider, "acme".
ACME_PROVIDER = oauth2_provider("acme", "Acme")
_CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def make_user(
    email: str = "viewer@example.com",
    *,
    role: str = "viewer",
    password: str | None = DEFAULT_PASSWORD,
    enabled: bool = True,
    must_change_password: bool = False,
) -> User:
    """A committed staff user (``password=None``: one only single sign-on can sign in)."""
    user = accounts.create_user(
        email, role, password, must_change_password=must_change_password
    )
    user.enabled = enabled
    db.session.commit()
    return user


def csrf_token(client, path: str = "/login", **request_options) -> str:
    """The CSRF token of the first form on the page at ``path``."""
    page = client.get(path, **request_options).get_data(as_text=True)
    match = _CSRF_INPUT.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client, email: str, password: str = DEFAULT_PASSWORD, *, next: str | None = None):
    """Sign in through the form, as a browser would; returns the response (not followed)."""
    path = "/login" + (f"?{urlencode({'next': next})}" if next is not None else "")
    return client.post(
        path,
        data={"email": email, "password": password, "csrf_token": csrf_token(client)},
    )


def post_form(client, path: str, data: dict | None = None, *, token_from: str = "/", **kwargs):
    """POST ``data`` to ``path`` with a CSRF token taken from the page at ``token_from``."""
    return client.post(
        path, data={**(data or {}), "csrf_token": csrf_token(client, token_from)}, **kwargs
    )


def change_password(client, current: str, new: str, repeat: str | None = None, *, query=""):
    """Send the change-password form (``query``: e.g. ``"?next=/"``)."""
    return post_form(
        client,
        "/account/password" + query,
        {"current_password": current, "new_password": new, "confirm_password": repeat or new},
        token_from="/account/password",
    )
