"""Alerts: events about connections (and providers) written to an outbox, sent by the worker.

See docs/architecture.md, "Alerts". :mod:`.events` writes an alert in the transaction of the
state change that caused it; :mod:`.rules` adds the time-based ones; :mod:`.delivery` turns
alerts into one delivery per channel and sends them; :mod:`.channels` are e-mail, a Standard
Webhooks receiver and Slack; :mod:`.messages` words them. Never a token, key or secret.
"""

from __future__ import annotations

from flask import Flask

from vault.alerts.channels import configured_channels
from vault.alerts.events import listen_for_state_changes


def init_alerts(app: Flask) -> None:
    """Build this app's channels from its settings and watch connections' state changes."""
    app.extensions["alert_channels"] = configured_channels(app.config)
    listen_for_state_changes()
