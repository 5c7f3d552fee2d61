"""The device authorization grant (RFC 8628): Connect shows a code, the server polls.

Against a device-endpoint stand-in over real HTTP on loopback (tests/support/device_stub.py).
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select, text, update

from tests.conftest import TEST_ENCRYPTION_SECRET
from tests.support.builders import csrf_token, login, post_form
from tests.support.device_stub import DeviceStub
from tests.support.refresh_fixtures import both_backends
from tests.support.registry import load_registry
from vault.config import ConfigError
from vault.extensions import db as _db
from vault.models import AuditEvent, Connection, DeviceGrant, TokenKind, utcnow
from vault.services.device_grants import advance_device_grant, prune_device_grants
from vault.tokens.store import token_vault
from vault.worker.jobs import default_jobs, device_grants_job

pytestmark = pytest.mark.shared_postgres_database  # one database for the module


@pytest.fixture
def device_stub():
    with DeviceStub() as stub:
        yield stub


@pytest.fixture
def app_config(app_config, providers_file, device_stub):
    providers_file.write_text(device_stub.providers_toml("tv"), encoding="utf-8")
    app_config["VAULT_PROVIDER_TIMEOUT_SECONDS"] = 3
    return app_config


def connect(admin_client):
    """Press Connect; returns the grant's page path."""
    response = post_form(admin_client, "/connect/tv")
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert re.fullmatch(r"/device-grants/\d+", location)
    return location


def poll(admin_client, page: str):
    """What the page's script does: POST .../poll with the page's CSRF token in a header."""
    token = csrf_token(admin_client, page)
    return admin_client.post(f"{page}/poll", headers={"X-CSRFToken": token})


def the_grant(db) -> DeviceGrant:
    db.session.expire_all()
    return db.session.scalars(select(DeviceGrant)).one()


def make_due(db) -> None:
    """Let the interval pass (instead of sleeping through it)."""
    db.session.execute(update(DeviceGrant).values(next_poll_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()


def actions(db) -> list[str]:
    return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_the_providers_file_checks_the_device_flow(tmp_path):
    base = '[d]\ntype = "oauth2"\nclient_id = "x"\nclient_secret = "y"\ntoken_url = "https://t/t"\n'
    device = load_registry(
        tmp_path, base + 'flow = "device"\ndevice_authorization_url = "https://t/device"\n'
    ).get("d")
    assert device.uses_device_flow and device.authorize_url is None
    oidc = ('[o]\ntype = "oidc"\nserver_metadata_url = "https://o/.well-known/x"\n'
            'client_id = "x"\nclient_secret = "y"\nflow = "device"\n')
    assert load_registry(tmp_path, oidc).get("o").device_authorization_url is None  # discovery
    for table, expected in (
        (base + 'flow = "device"\n', "[d] device_authorization_url: missing"),
        (base + 'flow = "telepathy"\n', "[d] flow: must be one of redirect, device"),
        (base + 'flow = "device"\ndevice_authorization_url = "ftp://t"\n',
         "[d] device_authorization_url: 'ftp://t' is not an http(s) URL"),
        (base + 'device_authorization_url = "https://t/device"\n',
         '[d] device_authorization_url: only for flow = "device"'),
        (base + 'flow = "device"\ngrant_type = "client_credentials"\n'
         'device_authorization_url = "https://t/device"\n', '[d] flow: "device" is for OAuth'),
        ('[k]\npreset = "voicenter"\nflow = "device"\n', '[k] flow: "device" is for OAuth'),
        (oidc + 'staff_login = true\nallowed_domains = ["example.com"]\n',
         "[o] staff_login: staff sign in through the browser flow"),
    ):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_registry(tmp_path, table)


@both_backends
def test_connect_shows_the_code_and_lands_on_the_connection_once_approved(
    app, db, admin_client, device_stub
):
    page = connect(admin_client)
    html = admin_client.get(page).get_data(as_text=True)
    user_code = device_stub.user_codes[-1]
    assert user_code in html
    assert f"{device_stub.base_url}/activate" in html
    assert '<svg role="img" aria-label="QR code of the verification URL"' in html
    assert "<script" not in html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "js/device.js" in html
    assert device_stub.device_codes[-1] not in html
    assert device_stub.polls() == 0  # nobody polls before the interval
    assert poll(admin_client, page).get_json()["status"] == "pending"
    assert device_stub.polls() == 0, "the first interval has not passed"

    device_stub.script("authorization_pending", "approve")
    make_due(db)
    answer = poll(admin_client, page).get_json()
    assert answer == {"status": "pending", "interval": 5, "message": None, "location": page}
    assert device_stub.polls() == 1
    grant = the_grant(db)
    assert 4 <= (grant.next_poll_at - utcnow()).total_seconds() <= 5, "next poll one interval on"
    assert poll(admin_client, page).get_json()["status"] == "pending"
    assert device_stub.polls() == 1, "no poll faster than the interval"

    make_due(db)
    assert poll(admin_client, page).get_json()["status"] == "approved"
    assert device_stub.polls() == 2
    connection = db.session.scalars(select(Connection)).one()
    assert (connection.provider, connection.account_subject, connection.account_email) == (
        "tv", "tv-user-1", "tv.user@example.test")
    assert token_vault.get(connection, TokenKind.ACCESS) == device_stub.access_tokens[-1]
    assert token_vault.get(connection, TokenKind.REFRESH) == device_stub.refresh_tokens[-1]
    grant = the_grant(db)
    assert (grant.status, grant.connection_id, grant.ciphertext) == ("approved", connection.id, None)
    landing = admin_client.get(page)
    assert landing.status_code == 302
    assert landing.headers["Location"] == f"/connections/{connection.id}"
    detail = admin_client.get(landing.headers["Location"]).get_data(as_text=True)
    assert "Connected tv.user@example.test at TV Console with a device code" in detail
    assert [action for action in actions(db) if action != "auth.sign_in"] == [
        "device_grant.started", "connection.created", "device_grant.approved"]
    assert device_stub.requests[0]["form"] == {"scope": "read offline_access"}


def test_slow_down_adds_five_seconds_to_the_interval_each_time(app, db, admin_client,
                                                                device_stub):
    page = connect(admin_client)
    device_stub.script("slow_down", "slow_down")
    make_due(db)
    answer = poll(admin_client, page).get_json()
    assert answer["status"] == "pending" and answer["interval"] == 10
    assert "slow_down" in answer["message"] and "every 10 s" in answer["message"]
    grant = the_grant(db)
    assert 9 <= (grant.next_poll_at - utcnow()).total_seconds() <= 10
    assert poll(admin_client, page).get_json()["interval"] == 10
    assert device_stub.polls() == 1
    make_due(db)
    assert poll(admin_client, page).get_json()["interval"] == 15
    assert "every 15 s" in admin_client.get(page).get_data(as_text=True)


@pytest.mark.parametrize("outcome, status, words", [
    ("access_denied", "denied", "refused access (access_denied)"),
    ("expired_token", "expired", "before the code ran out (expired_token)"),
])
def test_a_denied_or_expired_grant_ends_with_its_own_page(
    app, db, admin_client, device_stub, outcome, status, words
):
    page = connect(admin_client)
    device_stub.script(outcome)
    make_due(db)
    assert poll(admin_client, page).get_json()["status"] == status
    ended = admin_client.get(page)
    assert ended.status_code == 410 and words in ended.get_data(as_text=True)
    assert device_stub.user_codes[-1] not in ended.get_data(as_text=True)
    grant = the_grant(db)
    assert grant.ciphertext is None and grant.key_id is None and grant.finished_at
    assert db.session.scalars(select(Connection)).all() == []
    assert actions(db)[-1] == f"device_grant.{status}"
    make_due(db)
    assert poll(admin_client, page).get_json()["status"] == status
    assert device_stub.polls() == 1, "an ended grant is never polled again"


def test_an_outage_keeps_the_grant_pending_and_a_refusal_ends_it(app, db, admin_client,
                                                                   device_stub):
    page = connect(admin_client)
    device_stub.script("unavailable", "invalid_grant")
    make_due(db)
    answer = poll(admin_client, page).get_json()
    assert answer["status"] == "pending" and "tries again" in answer["message"]
    make_due(db)
    assert poll(admin_client, page).get_json()["status"] == "failed"
    ended = admin_client.get(page).get_data(as_text=True)
    assert "TV Console refused the grant: invalid_grant" in ended
    assert actions(db)[-1] == "device_grant.failed"


def test_a_code_past_its_lifetime_expires_without_asking_the_provider(app, db, admin_client,
                                                                      device_stub):
    page = connect(admin_client)
    db.session.execute(update(DeviceGrant).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert poll(admin_client, page).get_json()["status"] == "expired"
    assert device_stub.polls() == 0


def test_a_provider_refusing_the_request_stores_nothing(app, db, admin_client, device_stub,
                                                         providers_file, make_app):
    providers_file.write_text(device_stub.providers_toml("tv").replace(
        "device-client-secret", "wrong-secret"), encoding="utf-8")
    other = make_app()
    with other.app_context():
        signed_in = other.test_client()
        login(signed_in, "admin@example.com")
        response = post_form(signed_in, "/connect/tv")
    assert response.status_code == 502
    assert "gave no device code: the provider refused" in response.get_data(as_text=True)
    assert db.session.scalars(select(DeviceGrant)).all() == []


@both_backends
def test_two_instances_polling_at_once_make_one_provider_call(
    app, db, admin_client, device_stub, make_app
):
    page = connect(admin_client)
    grant_id = the_grant(db).id
    device_stub.delay = 0.5  # both arrive while the first poll is still at the provider
    make_due(db)
    instances = [make_app(), make_app()]
    barrier = threading.Barrier(2)
    results: list[str | None] = []

    def poll_from(instance):
        with instance.app_context():
            barrier.wait()
            results.append(advance_device_grant(grant_id))

    threads = [threading.Thread(target=poll_from, args=(instance,)) for instance in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert results == ["pending", "pending"]
    assert device_stub.polls() == 1
    assert poll(admin_client, page).get_json()["status"] == "pending"
    assert device_stub.polls() == 1


def test_the_worker_completes_a_grant_whose_page_was_closed(app, db, admin_client, device_stub):
    assert "device-grants" in [job.name for job in default_jobs()]
    connect(admin_client)
    device_stub.script("approve")
    make_due(db)
    assert device_grants_job(utcnow()) is True
    assert the_grant(db).status == "approved"
    assert db.session.scalars(select(Connection)).one().account_email == "tv.user@example.test"


def test_no_code_or_token_leaks_into_logs_rows_audit_or_the_session(
    app, db, admin_client, device_stub, caplog
):
    caplog.set_level(logging.DEBUG)
    page = connect(admin_client)
    html = admin_client.get(page).get_data(as_text=True)
    device_stub.script("authorization_pending", "approve")
    make_due(db)
    poll(admin_client, page)
    with db.engine.connect() as raw:
        pending_dump = _dump(raw)
    make_due(db)
    poll(admin_client, page)
    device_code, user_code = device_stub.device_codes[-1], device_stub.user_codes[-1]
    assert device_code not in html and user_code in html
    assert device_code not in pending_dump and user_code not in pending_dump
    cookie = admin_client.get_cookie("__Host-session").value
    secrets_used = [device_code, user_code, *device_stub.access_tokens,
                    *device_stub.refresh_tokens]
    with db.engine.connect() as raw:
        final_dump = _dump(raw)
    for secret in secrets_used:
        assert secret not in caplog.text
        assert secret not in final_dump
        assert secret not in cookie
    details = " ".join(str(row) for row in db.session.execute(
        select(AuditEvent.action, AuditEvent.target, AuditEvent.detail)).all())
    assert "device_grant.started" in details and "device_grant.approved" in details
    assert all(secret not in details for secret in secrets_used)


def _dump(raw) -> str:
    rows = []
    for table in inspect(raw).get_table_names():
        for row in raw.execute(text(f'SELECT * FROM "{table}"')):
            rows.append(repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)))
    return "\n".join(rows)


def test_viewers_and_strangers_cannot_see_or_poll_a_grant(app, db, admin_client, viewer_client,
                                                          client, device_stub):
    page = connect(admin_client)
    assert viewer_client.get(page).status_code == 403
    assert viewer_client.post(f"{page}/poll").status_code in (400, 403)
    assert client.get(page).status_code == 302  # to the sign-in page
    assert admin_client.post(f"{page}/poll").status_code == 400  # no CSRF token
    assert admin_client.get("/device-grants/999999").status_code == 404
    assert admin_client.get("/connect/tv/callback?code=x&state=y").status_code == 404


def invoke(application, *args):
    """Run a CLI command in ``application`` (its own context: the CLI would reuse an outer one)."""
    with application.app_context():
        return application.test_cli_runner().invoke(args=list(args))


def test_rotate_key_and_verify_cover_pending_grants(app, db, admin_client, device_stub,
                                                    make_app):
    connect(admin_client)
    old_key = the_grant(db).key_id
    assert old_key == token_vault.cipher.current_key_id
    rotated = make_app(ENCRYPTION_SECRET="the-new-encryption-secret-after-rotation-42",
                       ENCRYPTION_SECRET_PREVIOUS=TEST_ENCRYPTION_SECRET)
    result = invoke(rotated, "vault", "rotate-key")
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 1 pending device grant(s)" in result.output
    grant = the_grant(db)
    assert grant.key_id not in (None, old_key)
    assert "already under key" in invoke(rotated, "vault", "rotate-key").output
    verified = invoke(rotated, "vault", "verify")
    assert verified.exit_code == 0 and "Checked 1 value(s): 1 decrypt" in verified.output
    assert invoke(app, "vault", "verify").exit_code == 1, "the old secret alone cannot read it"
    with rotated.app_context():  # the new key still shows the code on the grant's page
        from vault.services.device_grants import device_codes

        assert device_codes(_db.session.get(DeviceGrant, grant.id)).user_code == \
            device_stub.user_codes[-1]

    flipped = grant.ciphertext[:-1] + bytes([grant.ciphertext[-1] ^ 1])
    db.session.execute(update(DeviceGrant).values(ciphertext=flipped))
    db.session.commit()
    broken = invoke(rotated, "vault", "verify")
    assert broken.exit_code == 1 and f"undecryptable: device grant {grant.id}" in broken.output


def test_ended_grants_are_pruned_a_day_after_their_code_expired(app, db, admin_client,
                                                                device_stub):
    connect(admin_client)
    assert prune_device_grants(utcnow()) == 0
    db.session.execute(update(DeviceGrant).values(expires_at=utcnow() - timedelta(days=1, seconds=1)))
    db.session.commit()
    assert prune_device_grants(utcnow()) == 1
    assert db.session.scalars(select(DeviceGrant)).all() == []


def test_a_device_flow_connection_gets_no_reconnect_link(app, db, admin_client, device_stub):
    from vault.services.reconnect_links import LinkError, issue_reconnect_link

    page = connect(admin_client)
    device_stub.script("approve")
    make_due(db)
    assert poll(admin_client, page).get_json()["status"] == "approved"
    connection = db.session.scalars(select(Connection)).one()
    connection.status = "needs_reconnect"
    db.session.commit()
    with pytest.raises(LinkError):
        issue_reconnect_link(connection, created_by="admin@example.com", now=utcnow())
    assert 'value="tv"' not in admin_client.get("/links").get_data(as_text=True)
    # Connect again is how it is reconnected: a new code, the same connection.
    page = connect(admin_client)
    device_stub.script("approve")
    make_due(db)
    assert poll(admin_client, page).get_json()["status"] == "approved"
    db.session.expire_all()
    assert db.session.scalars(select(Connection)).one().status == "active"
    assert actions(db)[-2:] == ["connection.reconnected", "device_grant.approved"]
