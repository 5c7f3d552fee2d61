"""Google service accounts: the key file upload, the JWT bearer grant, renewal and rotation.

Google's token endpoint is :class:`tests.support.google_token_stub.GoogleTokenStub`, a real
HTTP server on loopback that verifies each assertion as Google documents it (RS256 signature
with the uploaded key's public half, ``kid``, ``iss``, ``sub``, ``aud``, ``scope``,
``iat``/``exp``) and hands out 30-second tokens, so the token API renews through the refresh
engine on every hand-out.
"""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from sqlalchemy import func, select

from tests.support.builders import csrf_token
from tests.support.google_token_stub import GOOGLE_TOKEN_URI, SCOPES, GoogleTokenStub
from tests.support.refresh_fixtures import both_backends
from vault.models import AuditEvent, Connection, ConnectionStatus, Token, TokenKind
from vault.refresh.engine import Outcome, refresh_now
from vault.services import service_keys
from vault.tokens.store import token_vault

pytestmark = pytest.mark.shared_postgres_database

KEY = "workspace"
ROBOT = "robot@vault-tests.iam.gserviceaccount.com"
BOSS = "boss@example.com"


@pytest.fixture
def google():
    with GoogleTokenStub(expires_in=30) as stub:
        yield stub


@pytest.fixture
def app_config(app_config, providers_file, google):
    providers_file.write_text(
        f'[{KEY}]\npreset = "google_service_account"\ntitle = "Workspace robot"\n'
        f'token_url = "{google.token_url}"\nscope = "{" ".join(SCOPES)}"\n',
        encoding="utf-8",
    )
    return app_config


def upload(client, key_file, *, subject="", scopes=SCOPES, raw: bytes | None = None,
           path: str = f"/connect/{KEY}/service-account"):
    data = raw if raw is not None else json.dumps(key_file).encode()
    form = {
        "csrf_token": csrf_token(client, path),
        "key_file": (io.BytesIO(data), "key.json", "application/json"),
        "subject": subject,
        "scopes": list(scopes),
    }
    return client.post(path, data=form, content_type="multipart/form-data")


def secret_fragments(key_file) -> list[str]:
    """Pieces of the private key any leak would show: its base64 lines."""
    lines = key_file["private_key"].splitlines()[1:-1]
    return [line for line in lines if len(line) > 40]


def only_connection(db) -> Connection:
    return db.session.scalars(select(Connection).where(Connection.provider == KEY)).one()


@both_backends
def test_an_uploaded_key_connects_shows_no_key_and_is_stored_encrypted(
    app, db, google, admin_client, caplog
):
    caplog.set_level(logging.DEBUG)
    key_file = google.create_key(ROBOT, "vault-tests")

    response = upload(admin_client, key_file)

    assert response.status_code == 302, response.get_data(as_text=True)
    connection = only_connection(db)
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert ROBOT in page and key_file["private_key_id"] in page and "vault-tests" in page
    assert "Service account" in page and "Replace key" in page
    # The stub saw one assertion: the uploaded key's, for the scopes picked, no subject.
    [(claims, token)] = google.accepted
    assert claims["iss"] == ROBOT and "sub" not in claims
    assert claims["scope"] == " ".join(SCOPES) and claims["aud"] == GOOGLE_TOKEN_URI
    assert token_vault.get(connection, TokenKind.ACCESS) == token
    assert connection.credential_key_id == key_file["private_key_id"]
    assert connection.scopes_requested == " ".join(SCOPES)
    assert connection.owner_email == connection.created_by.email  # whoever uploaded it
    stored = db.session.scalar(select(Token).where(
        Token.connection_id == connection.id, Token.kind == TokenKind.PRIVATE_KEY.value))
    assert b"PRIVATE KEY" not in stored.ciphertext
    assert json.loads(token_vault.decrypt(stored))["key_file"]["private_key"] == (
        key_file["private_key"])
    audit = " ".join(f"{e.action} {e.target} {e.detail}" for e in db.session.scalars(
        select(AuditEvent)))
    assert "credentials.added" in audit and key_file["private_key_id"] in audit
    for fragment in secret_fragments(key_file) + ["PRIVATE KEY"]:
        assert fragment not in page and fragment not in audit and fragment not in caplog.text


@both_backends
def test_the_token_api_renews_by_signing_a_new_assertion(app, db, google, admin_client, client):
    key_file = google.create_key(ROBOT)
    upload(admin_client, key_file)
    connection_id = only_connection(db).id
    _, service_key = service_keys.create_key("calendar-sync", [KEY], {KEY})
    db.session.commit()
    headers = {"Authorization": f"Bearer {service_key}"}

    handed = []
    for _ in range(2):  # a 30-second token is always within the 300-second refresh buffer
        response = client.get(f"/api/v1/connections/{connection_id}/access-token",
                              headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        handed.append(response.json["access_token"])

    assert handed == google.tokens_of(ROBOT)[1:]  # each hand-out a new assertion's token
    assert len(set(handed)) == 2 and len(google.accepted) == 3
    assert len({claims["jti"] for claims, _ in google.accepted}) == 3
    listing = client.get("/api/v1/connections", headers=headers)
    assert listing.status_code == 200, listing.get_data(as_text=True)
    [entry] = listing.json["connections"]
    assert entry["credential_kind"] == "service_account"
    assert entry["credential_key"]["id"] == key_file["private_key_id"]
    assert entry["credential_key"]["age_days"] == 0
    refreshed = db.session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "token.refreshed"))
    assert refreshed == 2


@both_backends
def test_domain_wide_delegation_signs_the_subject_and_a_refused_one_stores_nothing(
    app, db, google, admin_client
):
    key_file = google.create_key(ROBOT, delegates=(BOSS,))

    refused = upload(admin_client, key_file, subject="intruder@example.com")
    assert refused.status_code == 400
    assert "refused the key (unauthorized_client" in refused.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(Connection)) == 0
    assert db.session.scalar(select(func.count()).select_from(Token)) == 0

    accepted = upload(admin_client, key_file, subject=BOSS, scopes=SCOPES[:1])
    assert accepted.status_code == 302
    connection = only_connection(db)
    claims, _ = google.accepted[-1]
    assert claims["sub"] == BOSS and claims["scope"] == SCOPES[0]
    assert connection.account_email == BOSS
    assert connection.account_subject == f"{ROBOT} as {BOSS}"
    assert refresh_now(connection, "cli").outcome is Outcome.REFRESHED
    assert google.accepted[-1][0]["sub"] == BOSS  # renewing keeps impersonating


@pytest.mark.parametrize(("payload", "message"), [
    ({"type": "authorized_user", "client_id": "x"}, "\"type\" is not \"service_account\""),
    ({"type": "service_account", "private_key_id": "abc"}, "has no \"client_email\""),
    ("missing private_key", "has no \"private_key\""),
    ("bad pem", "\"private_key\" is not a PEM private key"),
    (b"\xff\xfenot json", "The file is not JSON"),
    (b" " * 20_000, "larger than 16 KB"),
])
def test_a_bad_key_file_is_refused_clearly_and_nothing_is_stored(
    app, db, google, admin_client, caplog, payload, message
):
    caplog.set_level(logging.DEBUG)
    good = google.create_key(ROBOT)
    if payload == "missing private_key":
        raw = json.dumps({k: v for k, v in good.items() if k != "private_key"}).encode()
    elif payload == "bad pem":
        broken = good["private_key"].replace("\n", "\n!!", 3)
        raw = json.dumps({**good, "private_key": broken}).encode()
    elif isinstance(payload, bytes):
        raw = payload
    else:
        raw = json.dumps(payload).encode()

    response = upload(admin_client, good, raw=raw)

    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in body.replace("&#34;", '"').replace("&quot;", '"')
    assert "Nothing was stored." in body
    assert db.session.scalar(select(func.count()).select_from(Connection)) == 0
    assert db.session.scalar(select(func.count()).select_from(Token)) == 0
    assert google.accepted == [] and google.refused == []
    for fragment in secret_fragments(good):
        assert fragment not in body and fragment not in caplog.text


def test_scopes_come_from_the_providers_file_only(app, db, google, admin_client):
    key_file = google.create_key(ROBOT)
    response = upload(admin_client, key_file, scopes=("https://mail.google.com/",))
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(Connection)) == 0


@both_backends
def test_replacing_the_key_file_rotates_the_key(app, db, google, admin_client, client):
    old = google.create_key(ROBOT)
    upload(admin_client, old)
    connection = only_connection(db)
    path = f"/connections/{connection.id}/service-account-key"
    assert old["private_key_id"] in admin_client.get(path).get_data(as_text=True)

    stranger = google.create_key("other@vault-tests.iam.gserviceaccount.com")
    wrong = upload(admin_client, stranger, path=path)
    assert wrong.status_code == 400 and "the file is a key of other@" in wrong.get_data(
        as_text=True)

    new = google.create_key(ROBOT)
    response = upload(admin_client, new, path=path)
    assert response.status_code == 302
    google.delete_key(ROBOT, old["private_key_id"])  # the old key is gone at Google
    page = admin_client.get(f"/connections/{connection.id}").get_data(as_text=True)
    shown = re.search(r'id="credential-key"><code>([0-9a-f]+)</code>', page).group(1)
    assert shown == new["private_key_id"]
    connection = only_connection(db)
    assert refresh_now(connection, "cli").outcome is Outcome.REFRESHED
    assert google.accepted[-1][0]["iss"] == ROBOT
    [event] = db.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "credentials.replaced")).all()
    assert event.detail == (f"service account key {old['private_key_id']} replaced by "
                            f"{new['private_key_id']}")


@both_backends
def test_a_deleted_key_needs_a_person(app, db, google, admin_client, client):
    key_file = google.create_key(ROBOT)
    upload(admin_client, key_file)
    google.delete_key(ROBOT, key_file["private_key_id"])
    connection = only_connection(db)

    result = refresh_now(connection, "cli")

    assert result.outcome is Outcome.NEEDS_RECONNECT
    connection = only_connection(db)
    assert connection.status == ConnectionStatus.NEEDS_RECONNECT.value
    assert "Invalid JWT Signature" in connection.last_error
    # Uploading a new key for the account makes it work again.
    new = google.create_key(ROBOT)
    path = f"/connections/{connection.id}/service-account-key"
    assert upload(admin_client, new, path=path).status_code == 302
    db.session.expire_all()
    assert only_connection(db).status == ConnectionStatus.ACTIVE.value


def test_a_viewer_cannot_upload(app, google, viewer_client):
    key_file = google.create_key(ROBOT)
    assert viewer_client.get(f"/connect/{KEY}/service-account").status_code == 403
    form = {"key_file": (io.BytesIO(json.dumps(key_file).encode()), "k.json")}
    assert viewer_client.post(f"/connect/{KEY}/service-account", data=form,
                              content_type="multipart/form-data").status_code in (400, 403)
    assert google.accepted == []
