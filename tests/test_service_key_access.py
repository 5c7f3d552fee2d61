"""What a service key may read: tag restrictions, expiry, a rotation's overlap, consumers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.support.refresh_fixtures import both_backends, make_connection
from vault.models import ConnectionConsumer, ConnectionTag, ServiceKey, utcnow
from vault.services import service_keys

pytestmark = pytest.mark.shared_postgres_database


def new_key(db, name, *, providers=(), tags=()) -> str:
    row, key = service_keys.create_key(name, list(providers), {"acme", "voicenter"})
    row.allowed_tags = list(tags)
    db.session.commit()
    return key


def tag(db, connection_id: int, *labels: str) -> None:
    db.session.add_all(ConnectionTag(connection_id=connection_id, tag=label) for label in labels)
    db.session.commit()


def get(client, path, key):
    return client.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {key}"})


@both_backends
def test_a_tag_restricted_key_sees_and_fetches_only_tagged_connections(vault_app, db, client,
                                                                       stub):
    billing = make_connection(stub, subject="billing-account", expires_in=600)
    calendar = make_connection(stub, subject="calendar-account", expires_in=600)
    untagged = make_connection(stub, subject="untagged-account", expires_in=600)
    tag(db, billing, "billing", "finance")
    tag(db, calendar, "calendar")
    key = new_key(db, "billing-integration", tags=["billing"])

    listed = get(client, "/connections", key).json["connections"]
    assert [connection["id"] for connection in listed] == [billing]
    assert get(client, f"/connections/{billing}/access-token", key).status_code == 200
    for hidden in (calendar, untagged):
        response = get(client, f"/connections/{hidden}/access-token", key)
        assert response.status_code == 404 and response.json["error"] == "not_found"

    everything = new_key(db, "everything")
    assert len(get(client, "/connections", everything).json["connections"]) == 3


@both_backends
def test_provider_and_tag_restrictions_both_apply(vault_app, db, client, stub):
    acme = make_connection(stub, subject="acme-billing", expires_in=600)
    other = make_connection(stub, provider="voicenter", subject="voicenter-billing")
    tag(db, acme, "billing")
    tag(db, other, "billing")
    key = new_key(db, "acme-billing", providers=["acme"], tags=["billing"])
    listed = get(client, "/connections", key).json["connections"]
    assert [connection["id"] for connection in listed] == [acme]


@both_backends
def test_an_expired_key_stops_working(vault_app, db, client, stub):
    make_connection(stub, subject="acme-account", expires_in=600)
    key = new_key(db, "short-lived")
    assert get(client, "/connections", key).status_code == 200
    db.session.execute(update(ServiceKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert get(client, "/connections", key).status_code == 401


@both_backends
def test_a_rotated_keys_previous_secret_works_until_the_overlap_ends(vault_app, db, client,
                                                                     stub):
    make_connection(stub, subject="acme-account", expires_in=600)
    old = new_key(db, "rotating")
    new = service_keys.generate_key()
    db.session.execute(
        update(ServiceKey).values(
            previous_key_hash=service_keys.hash_key(old),
            previous_key_expires_at=utcnow() + timedelta(hours=1),
            key_hash=service_keys.hash_key(new),
        )
    )
    db.session.commit()
    assert get(client, "/connections", old).status_code == 200
    assert get(client, "/connections", new).status_code == 200
    db.session.execute(
        update(ServiceKey).values(previous_key_expires_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    assert get(client, "/connections", old).status_code == 401
    assert get(client, "/connections", new).status_code == 200


@both_backends
def test_a_hand_out_records_its_consumer_at_most_once_a_minute(vault_app, db, client, stub):
    connection_id = make_connection(stub, subject="acme-account", expires_in=600)
    key = new_key(db, "consumer")
    assert get(client, f"/connections/{connection_id}/access-token", key).status_code == 200
    [row] = db.session.scalars(select(ConnectionConsumer)).all()
    first = row.last_fetched_at
    assert row.connection_id == connection_id and row.first_fetched_at == first

    assert get(client, f"/connections/{connection_id}/access-token", key).status_code == 200
    db.session.expire_all()
    assert db.session.scalars(select(ConnectionConsumer)).one().last_fetched_at == first

    earlier = utcnow() - timedelta(minutes=5)
    db.session.execute(update(ConnectionConsumer).values(last_fetched_at=earlier))
    db.session.commit()
    assert get(client, f"/connections/{connection_id}/access-token", key).status_code == 200
    db.session.expire_all()
    moved = db.session.scalars(select(ConnectionConsumer)).one()
    assert moved.last_fetched_at > earlier and moved.first_fetched_at == first
