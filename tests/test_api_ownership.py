"""The token API's ownership fields (owner, purpose, tags) and its ?tag= and ?owner= filters."""

from __future__ import annotations

import pytest
from sqlalchemy import event, update

from tests.support.refresh_fixtures import both_backends, make_api_key_connection
from vault.models import Connection, ConnectionTag
from vault.services import service_keys

pytestmark = pytest.mark.shared_postgres_database


@pytest.fixture
def providers(providers_file):
    providers_file.write_text(
        '[voicenter]\npreset = "voicenter"\n[whatsapp]\npreset = "whatsapp"\n', encoding="utf-8"
    )


@pytest.fixture
def app_config(app_config, providers):
    return app_config


def new_key(db, name="reader", *, providers=(), tags=()) -> str:
    _, key = service_keys.create_key(name, list(providers), {"voicenter", "whatsapp"}, tags=tags)
    db.session.commit()
    return key


def owned(db, provider, subject, *, owner=None, purpose=None, tags=()) -> int:
    connection_id = make_api_key_connection(provider, subject, f"{subject}-pasted-key-0000")
    db.session.execute(update(Connection).where(Connection.id == connection_id).values(
        owner_email=owner, purpose=purpose))
    db.session.add_all(ConnectionTag(connection_id=connection_id, tag=tag) for tag in tags)
    db.session.commit()
    return connection_id


def listing(client, key, query=""):
    return client.get(f"/api/v1/connections{query}", headers={"Authorization": f"Bearer {key}"})


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json
    return [connection["id"] for connection in response.json["connections"]]


@both_backends
def test_connections_carry_owner_purpose_and_sorted_tags(app, db, client):
    billing = owned(db, "voicenter", "billing-line", owner="ana@example.com",
                    purpose="Invoices for the accounting export", tags=["finance", "billing"])
    bare = owned(db, "whatsapp", "chat")
    answer = listing(client, new_key(db)).json["connections"]
    assert [c["id"] for c in answer] == [billing, bare]
    assert answer[0]["owner"] == "ana@example.com"
    assert answer[0]["purpose"] == "Invoices for the accounting export"
    assert answer[0]["tags"] == ["billing", "finance"]
    assert (answer[1]["owner"], answer[1]["purpose"], answer[1]["tags"]) == (None, None, [])


@both_backends
def test_tag_and_owner_filter_and_combine_with_provider(app, db, client):
    billing = owned(db, "voicenter", "billing-line", owner="ana@example.com", tags=["billing"])
    chat = owned(db, "whatsapp", "billing-chat", owner="ben@example.com", tags=["billing"])
    other = owned(db, "voicenter", "office", owner="ana@example.com", tags=["office"])
    key = new_key(db)
    assert ids(listing(client, key, "?tag=billing")) == [billing, chat]
    assert ids(listing(client, key, "?tag=Billing")) == [billing, chat]  # lower-cased
    assert ids(listing(client, key, "?owner=ANA@example.com")) == [billing, other]
    assert ids(listing(client, key, "?tag=billing&owner=ana@example.com")) == [billing]
    assert ids(listing(client, key, "?tag=billing&provider=whatsapp")) == [chat]
    assert ids(listing(client, key, "?tag=nobody")) == []
    assert ids(listing(client, key, "?owner=carl@example.com")) == []


def test_a_tag_outside_a_restricted_keys_tags_only_narrows_never_widens(app, db, client):
    both = owned(db, "voicenter", "both", tags=["billing", "finance"])
    owned(db, "voicenter", "finance-only", tags=["finance"])
    billing_only = owned(db, "voicenter", "billing-only", tags=["billing"])
    key = new_key(db, tags=["billing"])
    assert ids(listing(client, key)) == [both, billing_only]
    # Not an error: the connections the key may read that also carry the tag.
    assert ids(listing(client, key, "?tag=finance")) == [both]
    assert ids(listing(client, key, "?tag=calendar")) == []


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("?tag=", "invalid_tag"),
        ("?tag=has%20space", "invalid_tag"),
        ("?tag=" + "x" * 33, "invalid_tag"),
        ("?tag=billing&tag=finance", "invalid_tag"),
        ("?owner=", "invalid_owner"),
        ("?owner=not-an-address", "invalid_owner"),
        ("?owner=a%00@example.com", "invalid_owner"),
        ("?tags=billing", "unknown_parameter"),
    ],
)
def test_malformed_filters_are_400_in_json(app, db, client, query, error):
    response = listing(client, new_key(db), query)
    assert response.status_code == 400 and response.json["error"] == error


def test_tags_are_loaded_in_one_query_whatever_the_number_of_connections(app, db, client):
    key = new_key(db)

    def statements_for_listing() -> list[str]:
        seen: list[str] = []

        def count(conn, cursor, statement, *args):
            if statement.lstrip().upper().startswith("SELECT"):  # not the key's last use
                seen.append(statement)

        event.listen(db.engine, "before_cursor_execute", count)
        try:
            assert listing(client, key).status_code == 200
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
        return seen

    for n in range(3):
        owned(db, "voicenter", f"line-{n}", tags=["billing", f"t{n}"])
    few = statements_for_listing()
    assert sum("FROM connection_tags" in statement for statement in few) == 1
    for n in range(3, 12):
        owned(db, "voicenter", f"line-{n}", tags=["billing", f"t{n}"])
    assert len(statements_for_listing()) == len(few)
    assert len(listing(client, key).json["connections"]) == 12
