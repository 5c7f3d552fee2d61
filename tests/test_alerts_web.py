"""The alerts page (admins only), its test button, and /health's warning for a channel that
keeps failing; channel settings checked at start-up; Slack's message."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.support.alert_fixtures import SMTP_PASSWORD, WEBHOOK_PATH, WEBHOOK_SECRET
from tests.support.builders import csrf_token
from tests.support.smtp_server import free_port
from vault import create_app
from vault.alerts.channels import SlackChannel
from vault.alerts.delivery import deliver_pending, dispatch, message_for
from vault.alerts.events import NEEDS_RECONNECT
from vault.extensions import db
from vault.models import AuditEvent, Connection, Notification, utcnow
from vault.tokens.store import token_vault

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

@pytest.fixture
def app_config(app_config, alert_settings):
    return {**app_config, **alert_settings}


def broken_connection() -> Connection:
    connection = Connection(provider="acme", account_subject="s", account_email="jo@example.com")
    db.session.add(connection)
    db.session.commit()
    token_vault.mark_invalid(connection, "invalid_grant: revoked")
    db.session.commit()
    return connection


def test_the_page_is_for_admins_and_shows_hosts_never_secrets(
    app, admin_client, viewer_client, receiver
):
    assert viewer_client.get("/alerts").status_code == 403
    assert viewer_client.post("/alerts/test", data={
        "csrf_token": csrf_token(viewer_client, "/health")}).status_code == 403
    broken_connection()
    dispatch(utcnow())
    deliver_pending(utcnow())
    page = admin_client.get("/alerts").get_data(as_text=True)
    assert "127.0.0.1:" in page and "ops@example.com, oncall@example.com via" in page
    for secret in (SMTP_PASSWORD, WEBHOOK_SECRET, WEBHOOK_PATH, "/reconnect/"):
        assert secret not in page
    assert NEEDS_RECONNECT in page and "jo@example.com" in page
    assert page.count("delivered") >= 2


def test_send_test_alert_delivers_now_and_is_audited(app, admin_client, smtp, receiver):
    answer = admin_client.post(
        "/alerts/test", data={"csrf_token": csrf_token(admin_client, "/alerts")},
        follow_redirects=True,
    )
    assert "Test alert accepted by 2 channel(s)." in answer.get_data(as_text=True)
    assert smtp.messages[0]["Subject"] == "[Token Vault] Test alert"
    assert receiver.requests[0].json()["type"] == "vault.test"
    actions = db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions[-1] == "alerts.test_sent"
    assert admin_client.post("/alerts/test").status_code == 400  # no CSRF token


def test_a_channel_that_keeps_failing_shows_on_health(app, admin_client, viewer_client, receiver):
    receiver.status = 500
    broken_connection()
    now = utcnow()
    dispatch(now)
    for hours in range(4):
        deliver_pending(now + timedelta(hours=hours))
    page = viewer_client.get("/health").get_data(as_text=True)
    assert "Alert channel <strong>webhook</strong> keeps failing" in page
    assert "HTTP 500" in page and WEBHOOK_PATH not in page
    assert "<strong>email</strong>" not in page
    assert "Alerts</a>" in admin_client.get("/health").get_data(as_text=True)


def test_slack_gets_a_readable_message(app, receiver):
    broken_connection()
    dispatch(utcnow())
    notification = db.session.scalars(select(Notification)).one()
    SlackChannel(f"{receiver.url}/services/T0/B0/xyz").send(message_for(notification))
    [post] = receiver.requests
    text = post.json()["text"]
    assert text.startswith("*Reconnect needed*")
    assert "acme: jo@example.com" in text and "invalid_grant: revoked" in text
    assert "<https://vault.example.com/connections/" in text
    assert "|Reconnect link for the account" not in text  # acme is not in the providers file


@pytest.mark.parametrize(("changes", "message"), [
    ({"VAULT_SMTP_URL": "http://mail.example.com"}, "VAULT_SMTP_URL must look like"),
    ({"VAULT_SMTP_URL": "smtp://user@mail.example.com:587"}, "both a user and a password"),
    ({"VAULT_ALERT_EMAILS": ""}, "VAULT_ALERT_EMAILS is empty"),
    ({"VAULT_ALERT_EMAILS": "ops@example.com, nobody"}, "'nobody' is not an e-mail"),
    ({"VAULT_MAIL_FROM": ""}, "VAULT_MAIL_FROM is not set"),
    ({"VAULT_ALERT_WEBHOOK_SECRET": "plain-secret-value"}, "whsec_ followed by base64"),
    ({"VAULT_ALERT_WEBHOOK_SECRET": ""}, "whsec_ followed by base64"),
    ({"VAULT_ALERT_WEBHOOK_URL": "ftp://x"}, "VAULT_ALERT_WEBHOOK_URL must be"),
    ({"VAULT_ALERT_SLACK_WEBHOOK_URL": "http://hooks.slack.com/services/a"}, "must be an https"),
    ({"VAULT_BASE_URL": ""}, "VAULT_BASE_URL is not"),
])
def test_channel_settings_that_cannot_work_stop_start_up(app_config, changes, message):
    config = {**app_config, **changes}
    with pytest.raises(SystemExit) as stopped:
        create_app(config)
    text = str(stopped.value)
    assert text.startswith("Token Vault cannot start:") and message in text
    assert "plain-secret-value" not in text and SMTP_PASSWORD not in text


def test_smtps_is_implicit_tls(app):
    # Nothing speaks TLS on this port: the channel fails in the TLS handshake, not in plain SMTP.
    from vault.alerts.channels import ChannelError, EmailChannel

    port = free_port()
    channel = EmailChannel(f"smtps://u:{SMTP_PASSWORD}@127.0.0.1:{port}", "v@example.com",
                           ["ops@example.com"])
    assert channel.target == f"ops@example.com via 127.0.0.1:{port}"
    broken_connection()
    dispatch(utcnow())
    with pytest.raises(ChannelError) as failed:
        channel.send(message_for(db.session.scalars(select(Notification)).one()))
    assert SMTP_PASSWORD not in str(failed.value) and "ConnectionRefused" in str(failed.value)


def test_smtp_uses_starttls_when_offered_and_then_logs_in(app, tmp_path, monkeypatch):
    from tests.support.smtp_server import SmtpServer
    from vault.alerts.channels import EmailChannel

    with SmtpServer(user="alerts", password=SMTP_PASSWORD, tls_dir=tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", server.ca_file)  # trust the test certificate
        broken_connection()
        dispatch(utcnow())
        message = message_for(db.session.scalars(select(Notification)).one())
        EmailChannel(server.url, "vault@example.com", ["ops@example.com"]).send(message)
    assert server.encrypted == [True] and server.logins == [True]
    assert server.messages[0]["Subject"].startswith("[Token Vault] Reconnect needed")


def test_smtp_without_starttls_gets_neither_password_nor_alert(app):
    """A server (or an attacker stripping STARTTLS) offering AUTH in the clear gets nothing:
    the password never reaches the wire and no message is accepted."""
    from tests.support.smtp_server import SmtpServer
    from vault.alerts.channels import ChannelError, EmailChannel

    with SmtpServer(user="alerts", password=SMTP_PASSWORD) as server:  # AUTH, no STARTTLS
        broken_connection()
        dispatch(utcnow())
        message = message_for(db.session.scalars(select(Notification)).one())
        with pytest.raises(ChannelError, match="offers no STARTTLS") as refused:
            EmailChannel(server.url, "vault@example.com", ["ops@example.com"]).send(message)
    assert server.messages == [] and server.logins == []
    assert SMTP_PASSWORD not in str(refused.value)


def test_smtp_stripped_starttls_never_puts_the_password_on_the_wire(app):
    """What the client writes to a server that offers AUTH PLAIN but no STARTTLS."""
    import base64
    import socket
    import threading

    from vault.alerts.channels import ChannelError, EmailChannel

    listener = socket.create_server(("127.0.0.1", 0))
    wire: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rwb") as stream:
            def say(line: str) -> None:
                stream.write(line.encode() + b"\r\n")
                stream.flush()
            say("220 mitm ESMTP")
            while line := stream.readline():
                wire.append(line)
                verb = line.upper()
                if verb.startswith(b"EHLO"):
                    say("250-mitm")
                    say("250 AUTH PLAIN LOGIN")
                elif verb.startswith(b"QUIT"):
                    say("221 bye")
                    break
                else:
                    say("235 ok" if verb.startswith(b"AUTH") else "250 ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    broken_connection()
    dispatch(utcnow())
    message = message_for(db.session.scalars(select(Notification)).one())
    with pytest.raises(ChannelError):
        EmailChannel(f"smtp://alerts:{SMTP_PASSWORD}@127.0.0.1:{port}",
                     "vault@example.com", ["ops@example.com"]).send(message)
    thread.join(5)
    listener.close()
    sent = b"".join(wire)
    encoded = base64.b64encode(f"\0alerts\0{SMTP_PASSWORD}".encode())
    assert b"AUTH" not in sent.upper() and b"MAIL FROM" not in sent.upper()
    assert SMTP_PASSWORD.encode() not in sent and encoded not in sent


def test_plain_smtp_is_allowed_only_to_a_loopback_relay_without_credentials(app):
    """The one clear-text case: nothing secret to strip, and nothing crosses a network."""
    from tests.support.smtp_server import SmtpServer
    from vault.alerts.channels import EmailChannel

    with SmtpServer() as server:
        broken_connection()
        dispatch(utcnow())
        message = message_for(db.session.scalars(select(Notification)).one())
        EmailChannel(server.url, "vault@example.com", ["ops@example.com"]).send(message)
    assert server.encrypted == [False] and len(server.messages) == 1
    assert not EmailChannel("smtp://relay.example.com:25", "v@example.com",
                            ["o@example.com"])._may_send_in_clear()


def test_an_event_about_a_provider_goes_out_without_a_connection(app, receiver, smtp):
    from vault.alerts.events import add_once

    event = "provider.client_secret_expiring"
    add_once(db.session, event, f"{event}:acme:1", provider="acme", connection_id=None,
             details={"provider": "acme", "reason": "Its client secret expires on 1 Jan 2027."})
    db.session.commit()
    dispatch(utcnow())
    assert deliver_pending(utcnow()).ok
    body = receiver.requests[0].json()
    assert body["type"] == "provider.client_secret_expiring"
    assert body["data"] == {"provider": {
        "key": "acme", "title": "acme", "reason": "Its client secret expires on 1 Jan 2027.",
        "url": "https://vault.example.com/"}}
    assert "client secret expires" in smtp.messages[0].get_body(("plain",)).get_content()


def test_old_alerts_with_nothing_left_to_send_are_pruned(app, receiver):
    from vault.alerts.delivery import prune
    from vault.models import DeliveryAttempt, NotificationDelivery

    broken_connection()
    now = utcnow()
    dispatch(now)
    receiver.status = 503
    deliver_pending(now)  # e-mail delivered, the webhook waits
    assert prune(now + timedelta(days=91)) == 0
    receiver.status = 200
    deliver_pending(now + timedelta(days=1))
    assert prune(now + timedelta(days=89)) == 0
    assert prune(now + timedelta(days=91)) == 1
    for model in (Notification, NotificationDelivery, DeliveryAttempt):
        assert db.session.scalars(select(model)).all() == []
