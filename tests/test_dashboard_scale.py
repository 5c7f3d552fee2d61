"""The dashboard at scale: a page runs as many statements with 1,000 connections as with 10,
and the list and health pages never decrypt anything (only the connection page may)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select

from vault.cli.demo import seed_demo
from vault.crypto import TokenCipher
from vault.extensions import db
from vault.models import Connection

LIST_PAGES = (
    "/",
    "/connections",
    "/connections?status=expiring&q=a&sort=refreshed&owner=a@example.com&tag=ops",
    "/health",
    "/audit",
    "/audit?action=token.refreshed&actor=system",
)


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def statements_per_page(client, paths) -> dict[str, int]:
    counts = {}
    for path in paths:
        with counted_statements() as statements:
            assert client.get(path).status_code == 200, path
        counts[path] = len(statements)
    return counts


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_statements_per_page_do_not_grow_with_the_number_of_connections(admin_client):
    seed_demo(10, seed=1)
    first = db.session.scalar(select(Connection.id).order_by(Connection.id).limit(1))
    paths = (*LIST_PAGES, f"/connections/{first}")
    with_10 = statements_per_page(admin_client, paths)
    seed_demo(990, seed=2)
    assert db.session.scalar(select(db.func.count(Connection.id))) == 1000
    with_1000 = statements_per_page(admin_client, paths)
    assert with_1000 == with_10
    # a handful: session user, stored counts, the capped time split (two), one page
    assert max(with_10.values()) <= 10, with_10


def test_list_and_health_pages_never_decrypt(admin_client, monkeypatch):
    seed_demo(40, seed=3)
    decrypted: list[bytes] = []
    original = TokenCipher.decrypt

    def spy(self, blob, *, aad=b""):
        decrypted.append(aad)
        return original(self, blob, aad=aad)

    monkeypatch.setattr(TokenCipher, "decrypt", spy)
    for path in LIST_PAGES:
        assert admin_client.get(path).status_code == 200, path
    assert decrypted == []

    with_tokens = db.session.scalar(
        select(Connection.id).where(Connection.status == "active").order_by(Connection.id).limit(1)
    )
    assert admin_client.get(f"/connections/{with_tokens}").status_code == 200
    prefix = f"connection:{with_tokens}:".encode()
    assert decrypted and all(aad.startswith(prefix) for aad in decrypted)
