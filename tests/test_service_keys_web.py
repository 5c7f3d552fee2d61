"""/service-keys: admins list, create (shown once), rotate, revoke and expire service keys."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from tests.support.builders import csrf_token, post_form
from tests.support.refresh_fixtures import make_api_key_connection
from vault.models import AuditEvent, ConnectionConsumer, ConnectionTag, ServiceKey, utcnow
from vault.services import service_keys

KEY_IN_PAGE = re.compile(r'id="created-key"[^>]*value="(tvk_[A-Za-z0-9_-]+)"')


@pytest.fixture
def providers(providers_file):
    providers_file.write_text(
        '[voicenter]\npreset = "voicenter"\n[whatsapp]\npreset = "whatsapp"\n', encoding="utf-8"
    )


@pytest.fixture
def app_config(app_config, providers):
    return app_config


def create(client, **fields):
    data = {"name": "billing", **fields}
    return post_form(client, "/service-keys", data, token_from="/service-keys")


def shown_key(response) -> str:
    match = KEY_IN_PAGE.search(response.get_data(as_text=True))
    assert match, "the new key is not on the page"
    return match.group(1)


def api(client, path, key):
    return client.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {key}"})


def key_row(db, name="billing") -> ServiceKey:
    db.session.expire_all()
    return db.session.scalars(select(ServiceKey).where(ServiceKey.name == name)).one()


def everything_stored(db) -> str:
    dumped = []
    for table in ("service_keys", "audit_events", "users"):
        dumped += [str(values) for values in db.session.execute(text(f"SELECT * FROM {table}"))]
    return "\n".join(dumped)


def test_viewers_get_403_on_every_page_and_action(admin_client, viewer_client, db):
    admin_key = shown_key(create(admin_client))
    key_id = key_row(db).id
    token = csrf_token(viewer_client, "/")
    for path in ("/service-keys", f"/service-keys/{key_id}"):
        assert viewer_client.get(path).status_code == 403
    for path in ("/service-keys", f"/service-keys/{key_id}/rotate",
                 f"/service-keys/{key_id}/revoke", f"/service-keys/{key_id}/expiry"):
        response = viewer_client.post(path, data={"csrf_token": token, "name": "x",
                                                  "overlap_hours": "0", "expires_days": "1"})
        assert response.status_code == 403
    assert db.session.scalar(select(func.count()).select_from(ServiceKey)) == 1
    assert key_row(db).revoked_at is None and key_row(db).rotated_at is None
    assert service_keys.authenticate(admin_key) is not None
    # Not signed in: to the sign-in page, nothing else.
    anonymous = admin_client.application.test_client()
    assert anonymous.get("/service-keys").status_code == 302


def test_a_post_without_csrf_token_changes_nothing(admin_client, db):
    response = admin_client.post("/service-keys", data={"name": "billing"})
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(ServiceKey)) == 0


def test_the_new_key_is_shown_once_works_and_appears_nowhere_else(admin_client, app, db,
                                                                  caplog):
    caplog.set_level(logging.DEBUG)
    make_api_key_connection("voicenter", "office", "vc-pasted-key-123456")
    response = create(admin_client, providers=["voicenter"], tags="", expires_days="")
    assert response.status_code == 201
    key = shown_key(response)
    page = response.get_data(as_text=True)
    assert 'data-copy-from="created-key"' in page and "js/copy.js" in page
    assert response.headers["Cache-Control"] == "no-store"

    listed = api(admin_client, "/connections", key)
    assert listed.status_code == 200 and len(listed.json["connections"]) == 1
    connection_id = listed.json["connections"][0]["id"]
    handed = api(admin_client, f"/connections/{connection_id}/access-token", key)
    assert handed.status_code == 200 and handed.json["access_token"] == "vc-pasted-key-123456"

    row = key_row(db)
    assert row.created_by == "admin@example.com" and row.allowed_providers == ["voicenter"]
    later = [admin_client.get("/service-keys"), admin_client.get(f"/service-keys/{row.id}")]
    for later_page in later:
        text_ = later_page.get_data(as_text=True)
        assert later_page.status_code == 200 and key not in text_
        assert row.key_prefix in text_
    assert "office" in later[1].get_data(as_text=True)  # the connection it used
    assert "office" not in later[0].get_data(as_text=True)  # the list names no connection
    with admin_client.session_transaction() as session:
        assert key not in str(dict(session))
    assert key not in caplog.text
    assert key not in everything_stored(db)
    created = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "service_key.created")
    ).one()
    assert created.actor == "admin@example.com" and created.actor_user_id is not None
    assert "providers: voicenter" in created.detail


def test_create_with_tags_restricts_the_key_to_tagged_connections(admin_client, db):
    billing = make_api_key_connection("voicenter", "billing-line", "vc-billing-000000")
    calendar = make_api_key_connection("voicenter", "other-line", "vc-other-0000000")
    make_api_key_connection("whatsapp", "untagged", "wa-untagged-00000")
    db.session.add_all([ConnectionTag(connection_id=billing, tag="billing"),
                        ConnectionTag(connection_id=calendar, tag="calendar")])
    db.session.commit()
    key = shown_key(create(admin_client, tags="Billing, ", expires_days="30"))
    row = key_row(db)
    assert row.allowed_tags == ["billing"]
    assert timedelta(days=29) < row.expires_at - utcnow() <= timedelta(days=30)
    listed = api(admin_client, "/connections", key).json["connections"]
    assert [connection["id"] for connection in listed] == [billing]
    assert api(admin_client, f"/connections/{billing}/access-token", key).status_code == 200
    assert api(admin_client, f"/connections/{calendar}/access-token", key).status_code == 404
    page = admin_client.get("/service-keys").get_data(as_text=True)
    assert "<code>billing</code>" in page and "Providers: all" in page


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"providers": ["nope"]}, "is not a valid choice"),
        ({"tags": "bad tag!"}, "is not a tag"),
        ({"tags": ",".join(f"t{n}" for n in range(11))}, "At most 10 tags"),
        ({"expires_days": "0"}, "Number must be between 1 and 3650"),
        ({"expires_days": "soon"}, "Not a valid integer"),
        ({"name": ""}, "This field is required"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_nothing_stored(admin_client, db, fields,
                                                                 message):
    response = create(admin_client, **fields)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(ServiceKey)) == 0
    assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "service_key.created")) == 0


def test_a_duplicate_name_is_refused(admin_client, db):
    create(admin_client)
    response = create(admin_client)
    assert response.status_code == 400 and "exists already" in response.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(ServiceKey)) == 1


def test_rotate_keeps_the_old_key_for_the_overlap_then_stops_it(admin_client, db, caplog):
    caplog.set_level(logging.DEBUG)
    make_api_key_connection("voicenter", "office", "vc-pasted-key-123456")
    old = shown_key(create(admin_client, tags="", providers=["voicenter"]))
    row = key_row(db)
    page = admin_client.get(f"/service-keys/{row.id}").get_data(as_text=True)
    assert 'value="24" selected' in page  # the default overlap
    response = post_form(admin_client, f"/service-keys/{row.id}/rotate",
                         {"overlap_hours": "24"}, token_from=f"/service-keys/{row.id}")
    assert response.status_code == 200
    new = shown_key(response)
    assert new != old and "keeps working until" in response.get_data(as_text=True)

    rotated = key_row(db)
    assert rotated.id == row.id and rotated.allowed_providers == ["voicenter"]
    assert timedelta(hours=23) < rotated.previous_key_expires_at - utcnow() <= timedelta(hours=24)
    for key in (old, new):
        assert api(admin_client, "/connections", key).status_code == 200
    listing = admin_client.get("/service-keys").get_data(as_text=True)
    assert "in overlap" in listing

    # The overlap ends (the clock moved on): only the new key works.
    db.session.execute(update(ServiceKey).values(
        previous_key_expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert api(admin_client, "/connections", old).status_code == 401
    assert api(admin_client, "/connections", new).status_code == 200
    assert old not in caplog.text and new not in caplog.text
    assert old not in everything_stored(db) and new not in everything_stored(db)
    assert db.session.scalar(select(AuditEvent.detail).where(
        AuditEvent.action == "service_key.rotated")).endswith("works for 24 more hours")


def test_a_second_rotation_inside_the_overlap_ends_the_oldest_key(admin_client, db):
    first = shown_key(create(admin_client))
    key_id = key_row(db).id

    def rotate(hours: str) -> str:
        return shown_key(post_form(admin_client, f"/service-keys/{key_id}/rotate",
                                   {"overlap_hours": hours}, token_from=f"/service-keys/{key_id}"))

    second = rotate("24")
    third = rotate("0")
    assert api(admin_client, "/connections", first).status_code == 401
    assert api(admin_client, "/connections", second).status_code == 401  # no overlap asked
    assert api(admin_client, "/connections", third).status_code == 200


def test_revoke_stops_both_secrets_and_is_audited(admin_client, db):
    old = shown_key(create(admin_client))
    key_id = key_row(db).id
    new = shown_key(post_form(admin_client, f"/service-keys/{key_id}/rotate",
                              {"overlap_hours": "24"}, token_from=f"/service-keys/{key_id}"))
    response = post_form(admin_client, f"/service-keys/{key_id}/revoke",
                         token_from=f"/service-keys/{key_id}")
    assert response.status_code == 303
    for key in (old, new):
        assert api(admin_client, "/connections", key).status_code == 401
    page = admin_client.get(f"/service-keys/{key_id}").get_data(as_text=True)
    assert "revoked" in page and "Rotate key" not in page
    again = admin_client.post(f"/service-keys/{key_id}/rotate",
                              data={"overlap_hours": "24",
                                    "csrf_token": csrf_token(admin_client, "/service-keys")})
    assert again.status_code == 409
    actions = db.session.scalars(select(AuditEvent.action).where(
        AuditEvent.actor == "admin@example.com").order_by(AuditEvent.id)).all()
    assert actions[-3:] == ["service_key.created", "service_key.rotated", "service_key.revoked"]


def test_expiry_can_be_set_and_cleared_and_an_expired_key_stops(admin_client, db):
    key = shown_key(create(admin_client))
    key_id = key_row(db).id

    def set_expiry(days: str):
        return post_form(admin_client, f"/service-keys/{key_id}/expiry", {"expires_days": days},
                         token_from=f"/service-keys/{key_id}")

    assert set_expiry("3").status_code == 303
    assert timedelta(days=2) < key_row(db).expires_at - utcnow() <= timedelta(days=3)
    assert "expires soon" in admin_client.get("/service-keys").get_data(as_text=True)
    assert set_expiry("").status_code == 303
    assert key_row(db).expires_at is None
    assert set_expiry("99999").status_code == 400
    assert key_row(db).expires_at is None
    details = db.session.scalars(select(AuditEvent.detail).where(
        AuditEvent.action == "service_key.expiry_changed")).all()
    assert len(details) == 2 and details[-1] == "expires never"

    db.session.execute(update(ServiceKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert api(admin_client, "/connections", key).status_code == 401
    assert "expired" in admin_client.get("/service-keys").get_data(as_text=True)


def test_a_keys_page_lists_the_connections_it_used_with_the_last_fetch(admin_client, db):
    used = make_api_key_connection("voicenter", "used-line", "vc-used-key-000000")
    make_api_key_connection("voicenter", "unused-line", "vc-unused-key-0000")
    key = shown_key(create(admin_client))
    key_id = key_row(db).id
    assert "has not fetched any token yet" in admin_client.get(
        f"/service-keys/{key_id}").get_data(as_text=True)
    assert api(admin_client, f"/connections/{used}/access-token", key).status_code == 200
    consumer = db.session.scalars(select(ConnectionConsumer)).one()
    page = admin_client.get(f"/service-keys/{key_id}").get_data(as_text=True)
    assert f'href="/connections/{used}"' in page and "used-line" in page
    assert "unused-line" not in page
    assert consumer.last_fetched_at.isoformat(timespec="seconds") in page


def test_unknown_keys_are_404(admin_client):
    assert admin_client.get("/service-keys/999").status_code == 404
    token = csrf_token(admin_client, "/service-keys")
    assert admin_client.post("/service-keys/999/revoke",
                             data={"csrf_token": token}).status_code == 404
