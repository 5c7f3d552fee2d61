"""The running API against its own OpenAPI document, with schemathesis (in-process WSGI).

Generated requests (ids, provider filters, and requests without or with a wrong key) must
all get answers that the document describes: status, content type, JSON schema, headers.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.refresh_fixtures import make_connection, postgresql_only
from vault.models import Connection
from vault.services import service_keys, throttle
from vault.tokens.store import token_vault
from vault.web.api_spec import openapi_document

pytestmark = [
    pytest.mark.slow,
    postgresql_only,
    pytest.mark.shared_postgres_database,
]

# The document is loaded here, not from the running app (schemathesis' lazy loader needs a
# pytest internal that pytest 9 dropped); test_served_document_is_this_one ties the two.
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(autouse=True)
def unthrottled_failures(monkeypatch):
    """Schemathesis sends hundreds of requests without a key from one address; past the
    allowance they would get 429, which its auth check does not expect (429 itself is
    covered by tests/test_api_abuse.py)."""
    rule = throttle.API_KEY_FAILURES_PER_ADDRESS
    monkeypatch.setattr(throttle, "API_KEY_FAILURES_PER_ADDRESS",
                        throttle.Rule(rule.scope, 1_000_000, rule.window))


@pytest.fixture
def service_key(vault_app, db, stub) -> str:
    """A key for "acme" only, and connections that exercise 200, 404 and 409."""
    make_connection(stub, subject="fresh", expires_in=3600)
    broken = db.session.get(Connection, make_connection(stub, subject="broken", expires_in=3600))
    token_vault.mark_invalid(broken, "invalid_grant: revoked")
    make_connection(stub, provider="voicenter", subject="not-allowed")
    _, key = service_keys.create_key("schemathesis", ["acme"], {"acme"})
    db.session.commit()
    return key


def test_served_document_is_this_one(vault_app):
    served = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", vault_app)
    assert served.raw_schema == openapi_document()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, vault_app, service_key):
    # Each test has an app of its own; checks' follow-up requests (without the key, with
    # other methods) go through the schema's transport, so both learn about it.
    case.operation.app = case.operation.schema.app = vault_app
    case.call_and_validate(headers={"Authorization": f"Bearer {service_key}"})
