"""Fixtures of the alert tests (a pytest plugin, listed in tests/conftest.py): a real SMTP
server and a webhook receiver, and the settings that point the vault's channels at them.

Test modules ask for ``smtp``, ``receiver`` and ``alert_settings`` by name and import the
constants.
"""

from __future__ import annotations

import pytest

from tests.support.smtp_server import SmtpServer
from tests.support.webhook_receiver import WebhookReceiver

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SMTP_PASSWORD = "smtp-password-never-shown"
BASE_URL = "https://vault.example.com"
WEBHOOK_PATH = "/hooks/vault-secret-path"


@pytest.fixture
def smtp(tmp_path_factory, monkeypatch):
    """A running SMTP server that wants STARTTLS, then ``alerts`` / :data:`SMTP_PASSWORD`.

    TLS because the e-mail channel never sends a password without it; the test certificate
    is trusted through ``SSL_CERT_FILE`` (inherited by worker processes too).
    """
    tls_dir = tmp_path_factory.mktemp("smtp-tls")
    with SmtpServer(user="alerts", password=SMTP_PASSWORD, tls_dir=tls_dir) as server:
        monkeypatch.setenv("SSL_CERT_FILE", server.ca_file)
        yield server


@pytest.fixture
def receiver():
    """A running webhook receiver (answers 200 until told otherwise)."""
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def alert_settings(smtp, receiver) -> dict[str, str]:
    """E-mail to ``smtp`` and a signed webhook to ``receiver`` (Slack needs https: its own
    test sends to the receiver directly)."""
    return {
        "VAULT_BASE_URL": BASE_URL,
        "VAULT_SMTP_URL": smtp.url,
        "VAULT_MAIL_FROM": "vault@example.com",
        "VAULT_ALERT_EMAILS": "ops@example.com, oncall@example.com",
        "VAULT_ALERT_WEBHOOK_URL": f"{receiver.url}{WEBHOOK_PATH}",
        "VAULT_ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
