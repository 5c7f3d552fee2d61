"""The alert channels, configured from the environment (checked in vault/config.py).

``email`` (SMTP with STARTTLS, or implicit TLS for ``smtps://``; see
:meth:`EmailChannel.send` for the one case that may go without TLS), ``webhook``
(signed per Standard Webhooks) and ``slack`` (an incoming webhook). Each sends one
:class:`~vault.alerts.messages.Message` with a timeout and raises :class:`ChannelError`, whose
message is safe to store and show: no password, secret or webhook path (a Slack URL is
itself a credential). Pages show a channel by :attr:`Channel.target`: the host only.
"""

from __future__ import annotations

import ipaddress
import json
import smtplib
import ssl
from collections.abc import Mapping
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import requests
from standardwebhooks import Webhook

from vault.alerts.messages import Message
from vault.redact import redact_known
from vault.tokens.store import sanitize_error

# Every channel's network timeout, seconds: a channel that hangs must not stall the worker.
TIMEOUT_SECONDS = 10
USER_AGENT = "TokenVault-Alerts/1"


class ChannelError(Exception):
    """A delivery failed; the message is sanitised (no credential, no URL path)."""


class Channel(Protocol):
    name: str  # email, webhook, slack: the deliveries' channel column
    for_people: bool  # gets digests instead of the many alerts they list

    @property
    def target(self) -> str:
        """Where it sends, safe to show: host (and port) only, or the recipients."""
        ...

    def send(self, message: Message) -> None:
        """Send ``message``; raise :class:`ChannelError` when it was not accepted."""
        ...


class EmailChannel:
    """Alert e-mails with a plain-text and an HTML part, over SMTP."""

    name = "email"
    for_people = True

    def __init__(self, url: str, sender: str, recipients: list[str]):
        parts = urlsplit(url)
        self._implicit_tls = parts.scheme == "smtps"
        self._host = parts.hostname or ""
        self._port = parts.port or (465 if self._implicit_tls else 25)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._sender = sender
        self._recipients = list(recipients)

    @property
    def target(self) -> str:
        return f"{', '.join(self._recipients)} via {self._host}:{self._port}"

    def send(self, message: Message) -> None:
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self._sender
        mail["To"] = ", ".join(self._recipients)
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = make_msgid(
            idstring=message.message_id, domain=self._sender.rpartition("@")[2]
        )
        mail.set_content(message.text())
        mail.add_alternative(message.html(), subtype="html")
        context = ssl.create_default_context()
        try:
            server: smtplib.SMTP
            if self._implicit_tls:
                server = smtplib.SMTP_SSL(
                    self._host, self._port, timeout=TIMEOUT_SECONDS, context=context
                )
            else:
                server = smtplib.SMTP(self._host, self._port, timeout=TIMEOUT_SECONDS)
            with server:
                server.ehlo()
                if not self._implicit_tls:
                    if server.has_extn("starttls"):
                        server.starttls(context=context)
                        server.ehlo()
                    elif not self._may_send_in_clear():
                        # A missing STARTTLS is what an attacker stripping it looks like:
                        # never hand it the password or the alert (with its links).
                        raise ChannelError(
                            "server offers no STARTTLS; refusing to send credentials/alerts"
                            " in the clear"
                        )
                if self._user and self._password:
                    server.login(self._user, self._password)
                server.send_message(mail)
        except smtplib.SMTPResponseException as error:
            detail = error.smtp_error.decode(errors="replace") if isinstance(
                error.smtp_error, bytes) else str(error.smtp_error)
            raise ChannelError(self._safe(f"SMTP {error.smtp_code}: {detail}")) from None
        except (smtplib.SMTPException, OSError) as error:
            raise ChannelError(self._safe(
                f"SMTP {self._host}:{self._port}: {type(error).__name__}: {error}"
            )) from None

    def _may_send_in_clear(self) -> bool:
        """The one case plain SMTP is allowed: a relay on a loopback address, no credentials.

        Traffic to loopback never crosses a network, so nobody can strip STARTTLS there; a
        password, though, is never sent without TLS, wherever the server is.
        """
        if self._user or self._password:
            return False
        try:
            return ipaddress.ip_address(self._host).is_loopback
        except ValueError:
            return self._host == "localhost"

    def _safe(self, text: str) -> str:
        return sanitize_error(redact_known(text, [self._password]))


class _HttpChannel:
    """A channel that POSTs JSON to a URL; shows only the URL's host."""

    name = ""
    for_people = False

    def __init__(self, url: str, secrets: list[str | None]):
        self._url = url
        parts = urlsplit(url)
        self._host = parts.netloc.rsplit("@", 1)[-1]
        # Anything of the URL beyond the host may be a credential (Slack's always is).
        self._secrets = [url, parts.path, parts.query, *secrets]

    @property
    def target(self) -> str:
        return self._host

    def _post(self, body: str, headers: Mapping[str, str]) -> None:
        try:
            answer = requests.post(
                self._url,
                data=body.encode(),
                headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
                timeout=TIMEOUT_SECONDS,
                allow_redirects=False,
            )
        except requests.Timeout:
            raise ChannelError(f"{self._host} did not answer within {TIMEOUT_SECONDS} s") from None
        except requests.RequestException as error:
            reason = type(error).__name__
            raise ChannelError(f"{self._host}: could not connect ({reason})") from None
        if not 200 <= answer.status_code < 300:
            snippet = " ".join(answer.text[:200].split())
            raise ChannelError(sanitize_error(redact_known(
                f"{self._host} answered HTTP {answer.status_code}: {snippet}", self._secrets
            )))


class WebhookChannel(_HttpChannel):
    """JSON alerts to a receiver, signed per the Standard Webhooks specification."""

    name = "webhook"

    def __init__(self, url: str, secret: str):
        super().__init__(url, [secret])
        self._signer = Webhook(secret)

    def send(self, message: Message) -> None:
        body = json.dumps(message.webhook_body(), separators=(",", ":"))
        sent_at = datetime.now(timezone.utc)
        headers = {
            "webhook-id": message.message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(message.message_id, sent_at, body),
        }
        self._post(body, headers)


class SlackChannel(_HttpChannel):
    """Readable alerts to a Slack incoming webhook."""

    name = "slack"
    for_people = True

    def __init__(self, url: str):
        super().__init__(url, [])

    def send(self, message: Message) -> None:
        self._post(json.dumps(message.slack()), {})


def configured_channels(config: Mapping[str, Any]) -> list[Channel]:
    """The channels the settings name, in a fixed order (none when nothing is set)."""
    channels: list[Channel] = []
    if config.get("VAULT_SMTP_URL"):
        channels.append(EmailChannel(
            config["VAULT_SMTP_URL"], config["VAULT_MAIL_FROM"], config["VAULT_ALERT_EMAILS"]
        ))
    if config.get("VAULT_ALERT_WEBHOOK_URL"):
        channels.append(WebhookChannel(
            config["VAULT_ALERT_WEBHOOK_URL"], config["VAULT_ALERT_WEBHOOK_SECRET"]
        ))
    if config.get("VAULT_ALERT_SLACK_WEBHOOK_URL"):
        channels.append(SlackChannel(config["VAULT_ALERT_SLACK_WEBHOOK_URL"]))
    return channels
