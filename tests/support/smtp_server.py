"""A real SMTP server on loopback (aiosmtpd), keeping every message it accepts.

    with SmtpServer() as smtp:
        ... VAULT_SMTP_URL=smtp.url ...
        smtp.messages  # list of email.message.EmailMessage

``SmtpServer(tls_dir=path)`` offers STARTTLS with a certificate for 127.0.0.1 it makes in
``path`` (``ca_file``, for the client to trust through ``SSL_CERT_FILE``) and requires it.
``SmtpServer(user=..., password=...)`` offers AUTH LOGIN/PLAIN (without TLS, on loopback
only) and records in ``logins`` whether each message's sender had logged in. :meth:`stop`,
then :meth:`start` again on the same port, make a server that is down, then up.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

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
            self.server.encrypted.append(session.ssl is not None)
        return "250 Message accepted for delivery"


class SmtpServer:
    """See the module docstring."""

    def __init__(
        self, *, user: str | None = None, password: str | None = None,
        tls_dir: Path | None = None,
    ):
        self.port = free_port()
        self.user, self.password = user, password
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[bool] = []
        self.encrypted: list[bool] = []  # whether each message came over TLS
        self.ca_file: str | None = None
        self._tls_context = _server_context(tls_dir, self) if tls_dir else None
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
        if self._tls_context is not None:
            options = {**options, "tls_context": self._tls_context, "require_starttls": True}
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


def _server_context(directory: Path, server: SmtpServer) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, written to ``directory``; its context."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    server.ca_file = str(cert_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context
