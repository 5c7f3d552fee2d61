"""Shared fixtures: ``app``, ``client``, ``runner``, ``db`` and database servers.

Web tests run on a throwaway SQLite file; tests that care about PostgreSQL (locking,
migrations, the store) ask for ``postgres_url``, which creates and drops a database of its
own on the server at ``VAULT_TEST_DATABASE_URL`` (default 127.0.0.1:5432). Without a server
those tests skip, except under ``CI=true``, where they fail. A module marked
``shared_postgres_database`` gets one database for all its tests instead.

More shared fixtures come from the plugins in ``pytest_plugins`` below (pytest reads that list
only in this, the top-level, conftest): test modules never import fixtures, they ask for them
by name, and import plain helpers and constants by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from tests.support.databases import temporary_database
from vault import create_app
from vault.extensions import db as _db
from vault.services import handout

TEST_ENCRYPTION_SECRET = "test-encryption-secret-0123456789abcdef"
TEST_SECRET_KEY = "test-session-secret-key-0123456789abcdef"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# First imported, first registered: tests.browser.fixtures comes first since
# tests.support.provider_stub imports it (pytest must see a plugin before anything imports it).
pytest_plugins = [
    # chromium, page, problems, screenshot, axe_check: tests/browser and tests/e2e
    "tests.browser.fixtures",
    # stub, closed_port, stub_config, vault_app: the refresh and token-API tests' provider
    "tests.support.refresh_fixtures",
    # users: the Connect tests' admin and viewer
    "tests.support.connect_flow",
    # smtp, receiver, alert_settings: the alert tests' SMTP server and webhook receiver
    "tests.support.alert_fixtures",
]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "shared_postgres_database: one PostgreSQL database for the whole module, not one a "
        "test (each test still starts from empty tables)",
    )


def _postgres_admin_url() -> URL:
    url = make_url(os.environ.get("VAULT_TEST_DATABASE_URL", DEFAULT_POSTGRES_URL))
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


@pytest.fixture(scope="session")
def postgres_server() -> URL:
    """URL of a reachable PostgreSQL server to create test databases on."""
    url = _postgres_admin_url()
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - any failure means "no server"
        message = f"PostgreSQL at {url.render_as_string()} is not answering: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true requires it)")
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="module")
def shared_postgres_url(postgres_server: URL) -> Iterator[str]:
    """One PostgreSQL database for a whole test module, dropped after its last test."""
    with temporary_database(postgres_server, prefix="tokenvault_test") as url:
        yield url


@pytest.fixture
def postgres_url(request, postgres_server: URL) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    In a module marked ``shared_postgres_database``, the module's one database
    (``shared_postgres_url``) instead: much quicker, and each test still starts from empty
    tables, since the ``app`` fixture creates and drops them.
    """
    if request.node.get_closest_marker("shared_postgres_database"):
        yield request.getfixturevalue("shared_postgres_url")
        return
    with temporary_database(postgres_server, prefix="tokenvault_test") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'vault.db'}"


@pytest.fixture
def database_url(request, tmp_path) -> str:
    """SQLite by default; parametrize indirectly with "postgresql" for a real server."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        return request.getfixturevalue("postgres_url")
    return request.getfixturevalue("sqlite_url")


@pytest.fixture
def providers_file(tmp_path):
    """An empty providers file the test may rewrite before asking for ``app``."""
    path = tmp_path / "providers.toml"
    path.write_text("", encoding="utf-8")
    return path


@pytest.fixture
def app_config(database_url, providers_file) -> dict:
    """The test configuration; a test may change it before asking for ``app``."""
    return {
        "TESTING": True,
        "SECRET_KEY": TEST_SECRET_KEY,
        "ENCRYPTION_SECRET": TEST_ENCRYPTION_SECRET,
        "ENCRYPTION_SECRET_PREVIOUS": "",
        "DATABASE_URL": database_url,
        "VAULT_PROVIDERS_FILE": str(providers_file),
    }


class RequestIsolatingClient(FlaskClient):
    """Runs each request in an app context of its own, as a real server does.

    Without this, requests reuse the test's app context, so ``g`` (and Flask-WTF's cached
    CSRF token, and the database session) would leak from one request into the next.
    """

    def open(self, *args, **kwargs):
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture
def app(app_config):
    """An application with its schema created, inside an app context."""
    application = create_app(app_config)
    application.test_client_class = RequestIsolatingClient
    with application.app_context():
        _db.create_all()
        yield application
        _db.session.remove()
        _db.drop_all()
        _db.engine.dispose()
        handout.dispose(application)


@pytest.fixture
def make_app(app_config):
    """``make_app(**changes)``: another app on the same database (other secrets, settings).

    Its engine is disposed after the test; ask for it after ``app`` so that happens before
    ``app`` drops the schema.
    """
    made = []

    def build(**changes):
        application = create_app({**app_config, **changes})
        application.test_client_class = RequestIsolatingClient
        made.append(application)
        return application

    yield build
    for application in made:
        with application.app_context():
            _db.session.remove()
            _db.engine.dispose()
        handout.dispose(application)


@pytest.fixture
def db(app):
    """The Flask-SQLAlchemy extension, bound to ``app``."""
    return _db


@pytest.fixture
def client(app):
    """A test client for ``app``."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner for ``app``."""
    return app.test_cli_runner()


# -- staff users and signed-in clients (tests/support/builders.py has the builders) ------------------


@pytest.fixture
def admin_user(app):
    """An enabled admin, ``admin@example.com``, with ``builders.DEFAULT_PASSWORD``."""
    from tests.support.builders import make_user

    return make_user("admin@example.com", role="admin")


@pytest.fixture
def viewer_user(app):
    """An enabled viewer, ``viewer@example.com``, with ``builders.DEFAULT_PASSWORD``."""
    from tests.support.builders import make_user

    return make_user("viewer@example.com", role="viewer")


@pytest.fixture
def admin_client(app, admin_user):
    """A test client signed in as ``admin_user`` through the sign-in form."""
    from tests.support.builders import login

    signed_in = app.test_client()
    assert login(signed_in, admin_user.email).status_code == 302
    return signed_in


@pytest.fixture
def viewer_client(app, viewer_user):
    """A test client signed in as ``viewer_user`` through the sign-in form."""
    from tests.support.builders import login

    signed_in = app.test_client()
    assert login(signed_in, viewer_user.email).status_code == 302
    return signed_in


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    """Rate-limit counters never carry over from one test to the next (whatever the storage)."""
    yield
    from vault.extensions import limiter

    if limiter.initialized:
        limiter.reset()


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    """Cheap Argon2 parameters in tests (the real ones cost ~0.2 s a hash on a slow machine).

    ``tests/test_auth_passwords.py`` checks that the application itself uses strong ones.
    """
    from argon2 import PasswordHasher

    from vault.services import accounts

    monkeypatch.setattr(
        accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
