"""Log hygiene: credentials never reach a log, whichever logger or handler the line goes to."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import request

from tests.support.builders import DEFAULT_PASSWORD, change_password, csrf_token, login, make_user
from tests.support.oidc_stub import OIDCStub
from vault.redact import REDACTED, install_log_redaction, redact, scrub_record

BEARER = "tvk_live_9Zq3xUeLr8WmT2bNcYh5"
REFRESH = "1//0gRefreshTokenValue-abcdefghijklmnop"
WRONG_PASSWORD = "Typo-In-The-Password-7"
NEW_PASSWORD = "A-Fresh-Password-2026"


# -- what redact() hides ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET /cb?code=4/0AbcDEF-xyz&state=s1", "4/0AbcDEF-xyz"),
        ("Using code_verifier: 'k3yV3r1f1er-abcdef'", "k3yV3r1f1er-abcdef"),
        ('{"access_token": "ya29.a0AfH6SMBx", "expires_in": 3599}', "ya29.a0AfH6SMBx"),
        ("refresh_token=1//0gabcdefghijklmnop", "1//0gabcdefghijklmnop"),
        ('{"id_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"}', "eyJhbGciOiJSUzI1NiJ9"),
        ("client_secret=s3cr3t-value&grant_type=authorization_code", "s3cr3t-value"),
        ("password=hunter2-hunter2&email=a@b.c", "hunter2-hunter2"),
        ('{"password": "correct horse battery staple"}', "horse battery"),
        ("{'new_password': 'A-Fresh-One-1'}", "A-Fresh-One-1"),
        ("Authorization: Bearer tvk_abcdefghijkl", "tvk_abcdefghijkl"),
        ("{'Authorization': 'Token tvk_abcdefghijkl'}", "tvk_abcdefghijkl"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("Cookie: __Host-session=.eJxdjkFrwzAMhf-K0XkH2wxs_-Ae; theme=dark", ".eJxdjkFrwzAMhf"),
        ("csrf_token=IjQ5Y2RkNzE.aBcDeF.gHiJ", "IjQ5Y2RkNzE"),
        ("X-Api-Key: key-1234567890", "key-1234567890"),
        ("api_secret: 'sk_live_abcdef'", "sk_live_abcdef"),
    ],
)
def test_redact_hides_credentials(text, secret):
    cleaned = redact(text)

    assert secret not in cleaned and REDACTED in cleaned
    assert redact(cleaned) == cleaned  # scrubbing twice changes nothing more


@pytest.mark.parametrize(
    "text",
    [
        "status_code=503 error_code=timeout",
        "token_type=Bearer expires_in=3599 key_id=ab12cd34",
        "refreshed 12 tokens for provider=google",
        'WWW-Authenticate: Bearer realm="token-vault"',
    ],
)
def test_redact_leaves_ordinary_words_alone(text):
    assert redact(text) == text


# -- every record, whichever logger and handler ----------------------------------------------


def test_records_of_child_loggers_and_late_handlers_are_scrubbed(app, caplog):
    caplog.set_level(logging.DEBUG)  # pytest's handler arrives after create_app
    logging.getLogger("authlib.integrations.base_client.sync_app").debug(
        "Using code_verifier: %r", "verifier-abcdef-123456"
    )
    logging.getLogger("some.library.deep.down").info("sent refresh_token=%s", REFRESH)

    assert "verifier-abcdef-123456" not in caplog.text and REFRESH not in caplog.text
    assert all(REDACTED in record.getMessage() for record in caplog.records)


def test_tracebacks_and_stacks_are_scrubbed_too(app, caplog):
    caplog.set_level(logging.DEBUG)
    try:
        raise ValueError(f"provider said refresh_token={REFRESH}")
    except ValueError:
        logging.getLogger("vault").exception("refresh failed", stack_info=True)

    assert REFRESH not in caplog.text
    assert "ValueError: provider said refresh_token=[REDACTED]" in caplog.text


def test_a_line_whose_arguments_do_not_fit_its_format_hides_them(app, caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("vault").warning("two %s %s", f"password={WRONG_PASSWORD}")

    assert WRONG_PASSWORD not in caplog.text
    assert "arguments hidden" in caplog.text


def test_installing_twice_wraps_the_record_factory_once():
    install_log_redaction()
    factory = logging.getLogRecordFactory()

    install_log_redaction()

    assert logging.getLogRecordFactory() is factory


def test_scrub_record_works_on_a_record_made_outside_the_factory():
    record = logging.makeLogRecord({"msg": "token=%s", "args": ("abcdef123456",)})

    assert scrub_record(record).getMessage() == f"token={REDACTED}"


# -- the web flows, with everything logged at DEBUG ------------------------------------------


@pytest.fixture
def stub():
    with OIDCStub() as running:
        yield running


@pytest.fixture
def app_config(app_config, providers_file, stub):
    providers_file.write_text(
        "[acme]\ntitle = \"Acme\"\ntype = \"oidc\"\n"
        f'server_metadata_url = "{stub.discovery_url}"\n'
        f'client_id = "{stub.client_id}"\nclient_secret = "{stub.client_secret}"\n'
        'staff_login = true\nallowed_domains = ["example.com"]\n'
    )
    return app_config


@pytest.fixture
def app(app):
    """The app, logging every request as carelessly as possible: line, headers, form, cookies."""

    @app.after_request
    def log_everything(response):
        logging.getLogger("werkzeug").debug(
            "%s %s headers=%r form=%r set-cookie=%r",
            request.method, request.full_path, dict(request.headers), request.form.to_dict(),
            response.headers.getlist("Set-Cookie"),
        )
        return response

    return app


def test_no_secret_used_in_the_web_flows_reaches_the_log(app, client, stub, caplog):
    for name in (None, "authlib", "werkzeug", "vault", "urllib3", "flask_limiter"):
        caplog.set_level(logging.DEBUG, logger=name)
    make_user("viewer@example.com")
    make_user(stub.behaviour.account["email"], role="admin", password=None)
    secrets_used = [DEFAULT_PASSWORD, WRONG_PASSWORD, NEW_PASSWORD, BEARER, REFRESH,
                    stub.client_secret]

    login(client, "viewer@example.com", WRONG_PASSWORD)
    login(client, "viewer@example.com", DEFAULT_PASSWORD)
    secrets_used.append(client.get_cookie("__Host-session").value)
    assert change_password(client, DEFAULT_PASSWORD, NEW_PASSWORD).status_code == 302
    client.get("/api/v1/connections", headers={"Authorization": f"Bearer {BEARER}"})
    logging.getLogger("vault.refresh.engine").info("provider answered refresh_token=%s", REFRESH)

    browser = app.test_client()  # single sign-on, start to finish
    response = browser.post("/login/sso/acme", data={"csrf_token": csrf_token(browser)})
    callback = stub.authorize(_query(response.headers["Location"]))
    browser.get(callback.removeprefix("http://localhost"))
    assert browser.get("/").status_code == 200
    secrets_used.append(stub.token_requests[0]["form"]["code"])
    secrets_used.append(stub.token_requests[0]["form"]["code_verifier"])
    secrets_used += [v for v in stub.issued[0].values() if isinstance(v, str) and len(v) > 20]

    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    for secret in secrets_used:
        assert secret not in logged
    # And the secrets really went through the log (so this test is not vacuous):
    assert "Using code_verifier: '[REDACTED]'" in logged
    assert "'password': '[REDACTED]'" in logged and "'Authorization': '[REDACTED]'" in logged
    assert f"refresh_token={REDACTED}" in logged and "code=[REDACTED]" in logged


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))
