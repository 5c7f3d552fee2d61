"""The token API under abuse: refused keys throttled per address and audited in aggregate,
restricted keys told nothing about other providers' connections, and no token handed out for
a provider that has left the providers file."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.core.transport import Response as SchemathesisResponse
from sqlalchemy import select, text

from tests.support.refresh_fixtures import (
    OLD_ACCESS_TOKEN,
    both_backends,
    make_connection,
)
from vault.models import AuditEvent
from vault.services import service_keys
from vault.web.api_spec import openapi_document

pytestmark = [both_backends, pytest.mark.shared_postgres_database]

ALLOWANCE = 20  # refused keys per address in 15 minutes
UNKNOWN_KEY = "tvk_Unknwn" + "x" * 33
OTHER_UNKNOWN_KEY = "tvk_Other0" + "y" * 33


def new_key(db, name: str, providers: tuple[str, ...] = ()) -> str:
    _, key = service_keys.create_key(name, list(providers), {"acme", "voicenter"})
    db.session.commit()
    return key


def get(client, path: str, key: str | None = None, address: str = "127.0.0.1"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.get(f"/api/v1{path}", headers=headers, environ_base={"REMOTE_ADDR": address})


def refusals(db) -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "service_key.refused").order_by(AuditEvent.id)
    ))


def test_refused_keys_are_throttled_per_address_and_a_valid_key_never_is(vault_app, db, client):
    valid = new_key(db, "billing")
    for number in range(ALLOWANCE):
        key = UNKNOWN_KEY if number % 2 else None  # a wrong key or none at all
        assert get(client, "/connections", key, "192.0.2.1").status_code == 401

    throttled = get(client, "/connections", UNKNOWN_KEY, "192.0.2.1")

    assert throttled.status_code == 429 and throttled.json["error"] == "too_many_requests"
    assert 0 < int(throttled.headers["Retry-After"]) <= 15 * 60
    assert throttled.headers["Cache-Control"] == "no-store"
    assert get(client, "/connections", valid, "192.0.2.1").status_code == 200
    assert get(client, "/connections", UNKNOWN_KEY, "192.0.2.2").status_code == 401


def test_refusals_are_audited_once_per_prefix_and_address_and_never_with_the_key(
    vault_app, db, client, runner
):
    revoked = new_key(db, "old-integration")
    assert runner.invoke(args=["service-keys", "revoke", "old-integration"]).exit_code == 0
    for _ in range(3):
        get(client, "/connections", UNKNOWN_KEY, "192.0.2.1")
        get(client, "/connections", UNKNOWN_KEY, "192.0.2.2")
        get(client, "/connections/1/access-token", OTHER_UNKNOWN_KEY, "192.0.2.1")
        get(client, "/connections", revoked, "192.0.2.1")
        get(client, "/connections", None, "192.0.2.1")

    rows = [(e.target, e.client_address, e.detail.split(";")[0]) for e in refusals(db)]
    assert sorted(rows, key=str) == sorted([
        ("tvk_Unknwn", "192.0.2.1", "unknown key"),
        ("tvk_Unknwn", "192.0.2.2", "unknown key"),
        ("tvk_Other0", "192.0.2.1", "unknown key"),
        (revoked[:10], "192.0.2.1", "revoked key 'old-integration'"),
        (None, "192.0.2.1", "no service key"),
    ], key=str)
    assert {(e.actor, e.outcome) for e in refusals(db)} == {("anonymous", "failure")}
    for values in db.session.execute(text("SELECT * FROM audit_events")):
        for value in values:
            assert not any(key in str(value) for key in (UNKNOWN_KEY, OTHER_UNKNOWN_KEY, revoked))


def test_a_restricted_key_gets_the_same_404_for_another_providers_connection_and_a_missing_one(
    vault_app, db, client, stub
):
    key = new_key(db, "billing", ("acme",))
    other = make_connection(stub, provider="voicenter", subject="calls", expires_in=3600)

    foreign = get(client, f"/connections/{other}/access-token", key)
    missing = get(client, f"/connections/{other + 1000}/access-token", key)

    assert (foreign.status_code, foreign.json) == (missing.status_code, missing.json)
    assert foreign.status_code == 404 and foreign.json["error"] == "not_found"


@pytest.mark.parametrize("expires_in", [3600, 60], ids=["fresh", "due"])
def test_a_provider_gone_from_the_providers_file_gets_no_token_handed_out(
    vault_app, db, client, stub, expires_in
):
    key = new_key(db, "ops")  # every provider
    retired = make_connection(stub, provider="retired", subject="old", expires_in=expires_in)

    response = get(client, f"/connections/{retired}/access-token", key)

    assert response.status_code == 409, response.get_data(as_text=True)
    assert response.json["error"] == "provider_not_configured"
    assert "retired" in response.json["message"] and "providers file" in response.json["message"]
    assert OLD_ACCESS_TOKEN not in response.get_data(as_text=True)
    assert stub.count() == 0  # nor refreshed first
    handed_out = select(AuditEvent).where(AuditEvent.action == "token.handed_out")
    assert db.session.scalar(handed_out) is None


def test_the_openapi_document_describes_these_answers(vault_app, db, client, stub):
    schema = schemathesis.openapi.from_dict(openapi_document())
    key = new_key(db, "ops")
    retired = make_connection(stub, provider="retired", subject="old", expires_in=3600)
    for _ in range(ALLOWANCE):
        get(client, "/connections", UNKNOWN_KEY)
    answers = {
        ("/connections", 429): get(client, "/connections", UNKNOWN_KEY),
        ("/connections/{connection_id}/access-token", 429): get(
            client, f"/connections/{retired}/access-token", UNKNOWN_KEY
        ),
        ("/connections/{connection_id}/access-token", 409): get(
            client, f"/connections/{retired}/access-token", key
        ),
    }
    for (path, status), response in answers.items():
        assert response.status_code == status
        documented = schema.raw_schema["paths"][path]["get"]["responses"]
        assert str(status) in documented  # schemathesis checks bodies of documented statuses
        schema[path]["GET"].validate_response(SchemathesisResponse.from_wsgi(response))
        if status == 429:
            assert "Retry-After" in documented["429"]["headers"]
    token = schema.raw_schema["paths"]["/connections/{connection_id}/access-token"]["get"]
    assert "403" not in token["responses"]  # another provider's connection is a 404 now
    assert "provider_not_configured" in token["responses"]["409"]["description"]
