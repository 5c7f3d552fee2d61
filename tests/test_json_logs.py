"""VAULT_LOG_FORMAT=json: one JSON object per line, with the request id, and still scrubbed."""

from __future__ import annotations

import io
import json
import logging

import pytest
from flask import request

from vault.redact import REDACTED

REFRESH = "1//0gRefreshTokenValue-abcdefghijklmnop"
BEARER = "tvk_live_9Zq3xUeLr8WmT2bNcYh5"
FIELDS = {"timestamp", "level", "logger", "message", "request_id"}


@pytest.fixture
def json_app(make_app, app):
    return make_app(VAULT_LOG_FORMAT="json")


def lines_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_one_json_object_with_the_request_id(json_app):
    def log_lines():
        logging.getLogger("vault").warning("two\nlines in %s", request.path)

    json_app.before_request(log_lines)
    errors = io.StringIO()
    response = json_app.test_client().get(
        "/healthz", headers={"X-Request-ID": "json-1"}, errors_stream=errors
    )

    [entry] = lines_of(errors)  # the line break in the message stays inside the object
    assert set(entry) == FIELDS
    assert entry["message"] == "two\nlines in /healthz"
    assert entry["level"] == "WARNING" and entry["logger"] == "vault"
    assert entry["request_id"] == response.headers["X-Request-ID"] == "json-1"
    assert entry["timestamp"].endswith("Z") and "T" in entry["timestamp"]


def test_secrets_are_scrubbed_from_json_lines_and_tracebacks(json_app):
    def leak():
        log = logging.getLogger("some.library")
        log.warning("sent refresh_token=%s with Authorization: Bearer %s", REFRESH, BEARER)
        try:
            raise RuntimeError(f"provider echoed refresh_token={REFRESH}")
        except RuntimeError:
            log.exception("call failed for %s", request.headers.get("Authorization"))

    json_app.before_request(leak)
    errors = io.StringIO()
    json_app.test_client().get("/healthz", headers={"Authorization": f"Bearer {BEARER}"},
                               errors_stream=errors)

    text = errors.getvalue()
    assert REFRESH not in text and BEARER not in text
    warning, failure = lines_of(errors)
    assert REDACTED in warning["message"]
    assert REDACTED in failure["message"]
    assert "RuntimeError" in failure["exception"] and REDACTED in failure["exception"]
    assert failure["request_id"] == warning["request_id"] is not None


def test_a_line_outside_any_request_has_a_null_request_id(json_app, capsys):
    logging.getLogger("vault").error("from a command: password=%s", "hunter2-hunter2")
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["request_id"] is None
    assert "hunter2" not in entry["message"] and REDACTED in entry["message"]


def test_lines_go_out_once_whatever_the_number_of_apps(json_app, make_app, capsys):
    make_app(VAULT_LOG_FORMAT="json")  # a second app in the process replaces the handler
    logging.getLogger("vault").error("just once")
    lines = [line for line in capsys.readouterr().err.splitlines() if "just once" in line]
    assert len(lines) == 1


def test_an_unknown_log_format_stops_start_up(make_app, app):
    with pytest.raises(SystemExit, match="VAULT_LOG_FORMAT must be one of text, json"):
        make_app(VAULT_LOG_FORMAT="xml")


def test_many_apps_keep_one_record_factory_chain(json_app, make_app):
    def depth() -> int:
        factory, layers = logging.getLogRecordFactory(), 0
        while factory is not None:
            layers, factory = layers + 1, getattr(factory, "wrapped", None)
        return layers

    before = depth()
    for _ in range(5):
        make_app()
    assert depth() == before
