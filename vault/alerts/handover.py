"""E-mailing a reconnect link to the person taking a connection over (offboarding).

The people page makes the link (:func:`vault.services.reconnect_links.issue_reconnect_link`)
and shows it to the admin once; when alert e-mail is configured (``VAULT_SMTP_URL``) it is
also sent here, through the alerts' own SMTP channel and message format, to that one
recipient. The link is a bearer secret: it goes into the e-mail and nowhere else (not the
audit, not the log).
"""

from __future__ import annotations

import secrets

from flask import current_app

from vault.alerts.channels import ChannelError, EmailChannel
from vault.alerts.events import NEEDS_RECONNECT
from vault.alerts.messages import SUBJECT_PREFIX, Item, Message
from vault.models import Connection, utcnow


def can_email() -> bool:
    """Whether alert e-mail is configured, so a link can be sent as well as shown."""
    return bool(current_app.config.get("VAULT_SMTP_URL"))


def email_reconnect_link(
    connection: Connection, link_url: str, recipient: str, *, asked_by: str, leaver: str
) -> str | None:
    """Send ``link_url`` to ``recipient``; None when the server took it, else why not (safe
    to show and audit: the channel's error names no password and no link)."""
    config = current_app.config
    provider = current_app.extensions["providers"].get(connection.provider)
    title = provider.title if provider is not None else connection.provider
    account = connection.account_email or connection.account_name or connection.account_subject
    base = config["VAULT_BASE_URL"] or ""
    item = Item(
        event=NEEDS_RECONNECT, headline="Reconnect needed", provider=connection.provider,
        provider_title=title, account=account, connection_id=connection.id,
        status=connection.status,
        reason=f"{asked_by} asks you to reconnect this account: it was {leaver}'s, and you "
               "are taking it over. Sign in at the provider with this account.",
        url=f"{base}/connections/{connection.id}", reconnect_url=link_url,
    )
    message = Message(
        message_id=f"tv_handover_{secrets.token_hex(8)}", event=NEEDS_RECONNECT,
        subject=" ".join(f"{SUBJECT_PREFIX} Please reconnect {account} at {title}".split()),
        headline="Please reconnect an account", created_at=utcnow(), items=(item,),
    )
    channel = EmailChannel(config["VAULT_SMTP_URL"], config["VAULT_MAIL_FROM"], [recipient])
    try:
        channel.send(message)
    except ChannelError as error:
        return str(error)
    return None
