"""A real SMTP server on loopback (aiosmtpd), keeping every message it accepts.

    with SmtpServer() as smtp:
        ... VAULT_SMTP_URL=smtp.url ...
        smtp.messages  # list of email.message.EmailMessage

``SmtpServer(user=..., password=...)`` offers AUTH LOGIN/PLAIN (without TLS, on loopback
only) and records in ``logins`` whether each message's sender had logged in. :meth:`stop`,
then :meth:`start` again on the same port, make a server that is down, then up.
"""

from __future__ import annotations

import socket
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Keeper:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.server.lock:
            self.server.messages.append(message)  # type: ignore[arg-type]
            self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.server.logins.append(session.authenticated)
        return "250 Message accepted for delivery"


class SmtpServer:
    """See the module docstring."""

    def __init__(self, *, user: str | None = None, password: str | None = None):
        self.port = free_port()
        self.user, self.password = user, password
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[bool] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        credentials = f"{self.user}:{self.password}@" if self.user else ""
        return f"smtp://{credentials}127.0.0.1:{self.port}"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()
        ) == (self.user, self.password)
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        options = {}
        if self.user:
            options = {
                # AUTH offered without TLS (loopback only); who logged in is kept in logins.
                "authenticator": self._authenticate,
                "auth_require_tls": False,
            }
        self._controller = Controller(
            _Keeper(self), hostname="127.0.0.1", port=self.port, **options
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
