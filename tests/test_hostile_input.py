"""Hostile input gets a clean answer on every route, on SQLite and PostgreSQL (issue 17).

The walk takes every route of ``app.url_map`` (what ``flask routes`` lists) and sends hostile
values in its path parameters, its query string (as values and as names) and its form fields,
with a valid CSRF token so that they reach the view: anonymously, as a viewer, as an admin,
and with a service key. No answer may be a 5xx, except the token API's documented 503s.
The tests after it pin each rule down: control characters are refused with 400 and the error
page, ids that cannot exist are 404, oversized bodies 413 unread, and malformed e-mail
addresses are refused at sign-in and by ``flask users``.
"""

from __future__ import annotations

import io
import random
import re
from urllib.parse import quote

import pytest
from sqlalchemy import select
from werkzeug.exceptions import NotFound

from tests.support.builders import DEFAULT_PASSWORD, csrf_token, login, make_user, post_form
from tests.support.refresh_fixtures import both_backends, make_api_key_connection
from vault.extensions import db
from vault.models import AuditEvent, Connection, User
from vault.services import service_keys
from vault.web.converters import MAX_ID

pytestmark = pytest.mark.shared_postgres_database

# Raw, as they travel in a URL or a form body: percent-encoded characters, and encodings
# that are themselves broken.
HOSTILE = {
    "nul": "%00",
    "nul-inside": "a%00b",
    "escape": "%1B%5B31m",
    "bell-newline": "%07%0A",
    "bidi-override": quote("\u202egnp.exe"),
    "arabic-digits": quote("١٢٣"),
    "fullwidth-digits": quote("１２３"),
    "huge-integer": "9" * 30,
    "int32-overflow": "2147483648",
    "negative": "-1",
    "long": "x" * 5000,
    "bad-percent": "%zz%",
    "invalid-utf8": "%FF%FE%C0%80",
    "encoded-surrogate": "%ED%A0%80",
    "slashes": quote("../../etc/passwd", safe=""),
}
# Sent as the names of query parameters too (every value would only repeat these).
HOSTILE_NAMES = ("nul", "bidi-override", "invalid-utf8", "long")
# Everything any view reads from the query string or a form, and a few it does not.
QUERY_NAMES = (
    "q", "provider", "status", "sort", "page", "action", "actor", "connection", "next",
    "state", "code", "error", "error_description", "iss", "within", "unknown",
)
FORM_NAMES = (
    "email", "password", "current_password", "new_password", "confirm_password", "label",
    "api_key", "api_secret", "expires_on", "within", "submit", "unknown",
)
PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
PROVIDERS = """
[acme]
type = "oauth2"
client_id = "c"
client_secret = "s"
authorize_url = "https://acme.example/authorize"
token_url = "http://127.0.0.1:{port}/token"

[staff]
type = "oidc"
server_metadata_url = "http://127.0.0.1:{port}/.well-known/openid-configuration"
client_id = "c"
client_secret = "s"
staff_login = true
allowed_domains = ["example.com"]

[voicenter]
preset = "voicenter"
"""


@pytest.fixture
def app_config(app_config, providers_file, closed_port):
    """Providers that need no network: what would call one meets a closed port at once."""
    providers_file.write_text(PROVIDERS.format(port=closed_port), encoding="utf-8")
    return app_config


def connections() -> dict[str, int]:
    """An OAuth connection and an API-key connection, committed."""
    oauth = Connection(provider="acme", account_subject="subject-1", account_email="a@example.com")
    db.session.add(oauth)
    db.session.commit()
    return {"oauth": oauth.id, "api_key": make_api_key_connection("voicenter", "main", "k" * 20)}


class Walker:
    """One client walking every route as one kind of visitor, noting every 5xx."""

    def __init__(self, app, client, *, email=None, headers=None):
        self.app, self.client, self.email = app, client, email
        self.headers = headers or {}
        self.problems: list[str] = []
        self.sent = 0
        self.token = ""
        self.sign_in()

    def sign_in(self):
        if self.email:
            assert login(self.client, self.email).status_code == 302
        self.token = csrf_token(self.client, "/" if self.email else "/login")

    def send(self, method, path, body="", *, raw_path=None):
        body = f"csrf_token={self.token}&{body}" if method != "GET" else ""
        overrides = {"PATH_INFO": raw_path} if raw_path else {}
        self.sent += 1
        try:
            response = self.client.open(
                path, method=method, data=body.encode(), headers=self.headers,
                content_type="application/x-www-form-urlencoded", environ_overrides=overrides,
            )
            status = response.status_code
            response.close()
        except Exception as error:  # noqa: BLE001 - a crash is what the walk looks for
            self.problems.append(f"{method} {path[:120]} raised {error!r:.200}")
            return
        documented = status == 503 and path.startswith("/api/")
        if status >= 500 and not documented:
            self.problems.append(f"{method} {path[:120]} answered {status}")
        if self.email and path.startswith("/logout") and status == 302:
            self.sign_in()  # the walk goes on signed in

    def walk(self, ids: dict[str, int], prefix: str = "/"):
        for rule in self.app.url_map.iter_rules():
            if not rule.rule.startswith(prefix):
                continue
            valid = _valid_path(rule, ids)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                for kind, raw in HOSTILE.items():
                    if rule.arguments:
                        self.send(method, PARAMETER.sub(raw, rule.rule))
                    query = "&".join(f"{name}={raw}" for name in QUERY_NAMES)
                    self.send(method, f"{valid}?{query}")
                    if kind in HOSTILE_NAMES:
                        self.send(method, f"{valid}?{raw}=1")
                    if method != "GET":
                        self.send(method, valid, "&".join(f"{n}={raw}" for n in FORM_NAMES))
                if rule.arguments:  # bytes that are no UTF-8, as a server may hand them on
                    self.send(method, valid, raw_path=PARAMETER.sub("\xff\xfe", rule.rule))


def _valid_path(rule, ids: dict[str, int]) -> str:
    api_key = "credentials" in rule.rule
    values = {
        "connection_id": str(ids["api_key" if api_key else "oauth"]),
        "provider_key": "voicenter" if api_key else "acme",
        "key": "staff",
        "path": "connections/1/anything",
        "filename": "css/app.css",
        "token": "A" * 43,  # a reconnect link's token that matches no link
        "link_id": "1",
        "grant_id": "1",  # a device grant (issue 16) that does not exist
        "email": "nobody@example.com",  # a person page (issue 14) with nothing to show
        "key_id": "1",
        "user_id": "1",
    }
    return PARAMETER.sub(lambda match: values[match[1]], rule.rule)


@both_backends
@pytest.mark.parametrize("visitor", ["anonymous", "viewer", "admin", "service key"])
def test_no_route_answers_a_server_error_to_hostile_input(app, client, visitor):
    ids = connections()
    if visitor in ("viewer", "admin"):
        make_user(f"{visitor}@example.com", role=visitor)
    headers = {}
    if visitor == "service key":
        _, key = service_keys.create_key("walker", [], {"acme", "voicenter"})
        db.session.commit()
        headers = {"Authorization": f"Bearer {key}"}
    email = f"{visitor}@example.com" if visitor in ("viewer", "admin") else None
    walker = Walker(app, client, email=email, headers=headers)

    walker.walk(ids, prefix="/api/" if headers else "/")

    assert walker.problems == []
    assert walker.sent > (100 if headers else 1000)


# -- control characters: 400 and the error page, before any view runs ------------------------


@both_backends
def test_control_characters_are_refused_with_the_error_page(app, admin_client, client):
    ids = connections()
    pages = [
        admin_client.get("/connections?q=%00"),
        admin_client.get("/connections?provider=acme%00"),
        admin_client.get("/audit?action=auth.sign_in%00"),
        admin_client.get("/audit?actor=%1B"),
        admin_client.get("/audit?actor=%7F"),
        admin_client.get(f"/connections/{ids['oauth']}%00"),
        post_form(admin_client, "/connect/voicenter/credentials", {
            "label": "Main\x00account", "api_key": "k" * 20,
        }, token_from="/connect/voicenter/credentials"),
        client.post("/login", data={
            "email": "admin@example.com\x00", "password": DEFAULT_PASSWORD,
            "csrf_token": csrf_token(client),
        }),
    ]

    for response in pages:
        assert response.status_code == 400
        assert "control characters" in response.get_data(as_text=True)
        assert "Bad Request · Token Vault" in response.get_data(as_text=True)
    stored = select(Connection).where(Connection.account_name.contains("Main"))
    assert db.session.scalar(stored) is None


@both_backends
def test_tabs_and_line_breaks_are_ordinary_characters(admin_client):
    assert admin_client.get("/connections?q=a%09b%0D%0A").status_code == 200
    assert admin_client.get("/audit?actor=%0A").status_code == 200


# -- ids: ASCII digits within a 32-bit integer, else 404 ------------------------------------


@both_backends
@pytest.mark.parametrize("raw_id", [
    "2147483648", "99999999999999999999", "0", "00000000001", quote("١٢٣"), quote("１"), "1e3",
])
def test_an_id_that_cannot_exist_is_not_found_on_every_connection_route(
    app, admin_client, raw_id
):
    connection_id = connections()["oauth"]
    # What Werkzeug's own converter made of "١٢٣" and "１": they exist.
    db.session.add(Connection(id=123, provider="acme", account_subject="subject-123"))
    db.session.commit()
    assert admin_client.get(f"/connections/{connection_id}").status_code == 200
    assert admin_client.get("/connections/123").status_code == 200
    _, key = service_keys.create_key("ids", [], {"acme", "voicenter"})
    db.session.commit()
    token = csrf_token(admin_client, "/")
    routes = [rule for rule in app.url_map.iter_rules() if "<int:connection_id>" in rule.rule]
    # detail, refresh, check, reconnect-link, disconnect, credentials, API, details; the people
    # page's transfer, reconnect-link and disconnect; a service account's key replacement
    assert len(routes) == 12
    for rule in routes:
        path = rule.rule.replace("<int:connection_id>", raw_id)
        path = path.replace("<email>", "admin@example.com")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = admin_client.open(
                path, method=method, data={"csrf_token": token},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 404, (method, path)


def test_ids_from_1_to_the_largest_32_bit_integer_match_the_route(app):
    routes = app.url_map.bind("localhost")
    numbers = {MAX_ID, MAX_ID + 1, 10**10, 0, *random.Random(17).sample(range(1, 10**10), 2000)}
    numbers |= {n + delta for k in range(11) for n in (10**k, int(str(MAX_ID)[:k] or 0))
                for delta in (-1, 0, 1)}
    for number in sorted(numbers):
        path = f"/connections/{number}"
        if 1 <= number <= MAX_ID:
            assert routes.match(path) == ("connections.detail", {"connection_id": number}), path
        else:
            with pytest.raises(NotFound):
                routes.match(path)
    assert routes.build("connections.detail", {"connection_id": 42}) == "/connections/42"
    for path in ("/connections/007", "/connections/١٢٣", "/connections/１", "/connections/-1"):
        with pytest.raises(NotFound):  # one address per connection, in ASCII digits
            routes.match(path)


# -- bodies: 1 MiB at most, refused before anything reads them -------------------------------


class CountingStream(io.RawIOBase):
    """A request body of ``size`` bytes that counts how many were read."""

    def __init__(self, size: int):
        self.size, self.read_bytes = size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.size - self.read_bytes)
        buffer[:count] = b"a" * count
        self.read_bytes += count
        return count


@pytest.mark.parametrize("path", ["/login", "/connect/acme", "/logout", "/nowhere", "/api/v1/x"])
def test_a_50_mb_anonymous_post_is_refused_unread(client, path):
    body = CountingStream(50 * 1024 * 1024)

    response = client.post(
        path, content_type="application/x-www-form-urlencoded",
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(body.size)},
    )

    assert response.status_code == 413
    assert body.read_bytes == 0
    if not path.startswith("/api/"):
        assert "Request Entity Too Large · Token Vault" in response.get_data(as_text=True)


def test_a_body_without_a_length_is_read_no_further_than_the_limit(client):
    body = CountingStream(50 * 1024 * 1024)

    response = client.post(
        "/login", content_type="application/x-www-form-urlencoded",
        environ_overrides={  # chunked, as a server that ends the stream itself hands it on
            "wsgi.input": body, "wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked",
        },
    )

    assert response.status_code in (400, 413)  # what was read is no form with a CSRF token
    assert body.read_bytes <= 1024 * 1024


def test_an_ordinary_form_is_well_within_the_limit(app, admin_client):
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    response = post_form(admin_client, "/connect/voicenter/credentials", {
        "label": "Main", "api_key": "k" * 8000,
    }, token_from="/connect/voicenter/credentials")
    assert response.status_code == 302


# -- e-mail addresses: email-validator's syntax, at sign-in and in `flask users` -------------

MALFORMED_EMAILS = [
    "not-an-address", "two@@example.com", "a@b@example.com", "@example.com", "admin@",
    "admin\u202e@example.com", "admin\u200f@example.com", "ad min@example.com",
    "admin@exa mple.com", "admin@-example.com", '"quoted"@example.com', "admin@[127.0.0.1]",
    "admin\u0085@example.com",
]


@both_backends
@pytest.mark.parametrize("email", MALFORMED_EMAILS)
def test_a_malformed_email_is_refused_at_sign_in(client, admin_user, email):
    response = client.post("/login", data={
        "email": email, "password": DEFAULT_PASSWORD, "csrf_token": csrf_token(client),
    })

    assert response.status_code == 200
    assert "The e-mail address or password is not correct." in response.get_data(as_text=True)
    failures = db.session.scalars(
        select(AuditEvent.detail).where(AuditEvent.action == "auth.sign_in_failed")
    ).all()
    assert failures and "is not an e-mail address" in failures[-1]


@both_backends
@pytest.mark.parametrize("email", ["admin\x00@example.com", "admin\x1b]0;pwned\x07@example.com",
                                   *MALFORMED_EMAILS[:6]])
@pytest.mark.parametrize("command", [
    ["create", "--role", "viewer", "--password", DEFAULT_PASSWORD], ["set-role", "viewer"],
    ["disable"], ["enable"], ["reset-password"],
])
def test_users_commands_refuse_a_malformed_email_in_one_line(runner, admin_user, email, command):
    result = runner.invoke(args=["users", command[0], email, *command[1:]])

    assert result.exit_code == 1
    assert "is not an e-mail address" in result.output
    assert result.output.count("\n") == 1 and result.exception is not None
    assert not re.search(r"[\x00-\x08\x0b-\x1f\u202e]", result.output)  # nothing echoed raw
    assert db.session.scalar(select(User).where(User.email != admin_user.email)) is None


@both_backends
@pytest.mark.parametrize("email", ["admin@localhost", "ops@intranet", "Jörg@bücher.example"])
def test_local_and_international_addresses_still_work(runner, client, email):
    result = runner.invoke(args=["users", "create", email, "--role", "admin",
                                 "--password", DEFAULT_PASSWORD])
    assert result.exit_code == 0, result.output

    assert login(client, email.upper() if email.isascii() else email).status_code == 302
