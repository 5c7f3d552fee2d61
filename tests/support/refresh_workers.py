"""Entry points for the child processes of the multi-process refresh tests.

Kept apart from the test modules so that a child imports only what it needs.
"""

from __future__ import annotations


def fetch_access_token(config: dict, connection_id: int, barrier, results) -> None:
    """Build an app of our own, wait for every sibling, then ask for the access token."""
    from vault import create_app
    from vault.extensions import db
    from vault.models import Connection
    from vault.tokens.store import token_vault

    app = create_app(config)
    with app.app_context():
        connection = db.session.get(Connection, connection_id)
        db.session.commit()  # hold no pooled connection while waiting
        try:
            barrier.wait(timeout=60)
            results.put(("ok", token_vault.get_access_token(connection).value))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which fails
            results.put(("error", f"{type(error).__name__}: {error}"))
        finally:
            db.session.remove()
            db.engine.dispose()


def warm_up_fork_server() -> None:
    """Stretch the test secret once in the fork server, so 50 children need not (~0.15 s each).

    Called when the fork server imports ``tests.support.refresh_forkserver`` (see that module).
    """
    from tests.conftest import TEST_ENCRYPTION_SECRET
    from vault.crypto import _stretch_secret

    _stretch_secret(TEST_ENCRYPTION_SECRET)
