"""Request ids: kept from a valid X-Request-ID or made, returned, on every log line of the
request and in its audit rows."""

from __future__ import annotations

import io
import logging
import re

import pytest
from flask import request
from sqlalchemy import select

from tests.support.builders import DEFAULT_PASSWORD, csrf_token, make_user
from tests.support.refresh_fixtures import make_connection
from vault.models import AuditEvent
from vault.observability.request_ids import VALID_REQUEST_ID
from vault.services import service_keys

pytestmark = pytest.mark.shared_postgres_database  # one database for the module

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("incoming", ["abc-123", "A.b_c-9", "x" * 128, "0"])
def test_a_valid_incoming_id_is_kept_and_returned(app, client, incoming):
    response = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming


@pytest.mark.parametrize(
    "incoming",
    ["", "x" * 129, "has space", "quote\"d", "semi;colon", "caf\u00e9", "<script>", "a/b"],
)
def test_an_invalid_incoming_id_is_replaced_by_a_new_one(app, client, incoming):
    response = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert GENERATED.fullmatch(response.headers["X-Request-ID"])
    assert not VALID_REQUEST_ID.fullmatch(incoming)


def test_every_answer_carries_an_id_and_each_request_its_own(app, client):
    answers = [
        client.get("/healthz"),
        client.get("/connections"),  # redirected to sign in
        client.get("/login?next=%01"),  # hostile input: 400
        client.get("/api/v1/connections"),  # no service key: 401
        client.get("/api/v1/nothing-here"),  # 404 in JSON
        client.get("/metrics"),
    ]
    ids = [answer.headers.get("X-Request-ID") for answer in answers]
    assert all(ids) and all(GENERATED.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert answers[2].status_code == 400


def test_every_log_line_of_a_request_carries_its_id(app, client, caplog):
    def log_from_several_loggers():
        logging.getLogger("vault").warning("view of %s", request.path)
        logging.getLogger("some.library").error("library line")

    app.before_request(log_from_several_loggers)
    caplog.set_level(logging.INFO)
    errors = io.StringIO()  # the server's error stream, where the vault's handler writes
    first = client.get("/healthz", headers={"X-Request-ID": "req-one"}, errors_stream=errors)
    client.get("/healthz", headers={"X-Request-ID": "req-two"}, errors_stream=errors)

    assert first.headers["X-Request-ID"] == "req-one"
    lines = errors.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert all("[req-one]" in line for line in lines[:2])
    assert all("[req-two]" in line for line in lines[2:])
    records = [r for r in caplog.records if r.name in ("vault", "some.library")]
    assert [r.request_id for r in records] == ["req-one", "req-one", "req-two", "req-two"]


def test_a_line_outside_any_request_has_no_id(app, capsys):
    logging.getLogger("vault").warning("from a command")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "[-] from a command" in line


def test_audit_rows_keep_the_request_id(vault_app, db, client, stub):
    _, key = service_keys.create_key("billing", [], {"acme"})
    db.session.commit()
    connection_id = make_connection(stub, expires_in=3600)
    handed = client.get(f"/api/v1/connections/{connection_id}/access-token",
                        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "handout-7"})
    assert handed.status_code == 200

    make_user("admin@example.com", role="admin")
    signed_in = client.post(
        "/login",
        data={"email": "admin@example.com", "password": DEFAULT_PASSWORD,
              "csrf_token": csrf_token(client)},
    )
    assert signed_in.status_code == 302
    assert vault_app.test_cli_runner().invoke(
        args=["service-keys", "create", "reports"]).exit_code == 0

    rows = {event.action: event.request_id for event in db.session.scalars(select(AuditEvent))}
    assert rows["token.handed_out"] == "handout-7"
    assert rows["auth.sign_in"] == signed_in.headers["X-Request-ID"]
    assert GENERATED.fullmatch(rows["auth.sign_in"])
    assert [event.request_id for event in db.session.scalars(
        select(AuditEvent).where(AuditEvent.target == "reports"))] == [None]  # a command
