"""How an alert reads: one :class:`Message` per delivery, in each channel's form.

Every message is a headline and a list of items, one per connection (a digest has many), each
with the provider, the account, the reason in plain words, the link to the connection's page
and, for a connection needing reconnection, the reconnect link. Built from the alert's
snapshot: never a token, key or secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app, render_template

from vault.alerts.events import (
    CLIENT_SECRET_EXPIRING,
    DIGEST,
    EXPIRING,
    NEEDS_RECONNECT,
    RECOVERED,
    REFRESH_FAILING,
    TEST,
)
from vault.models import Notification

SUBJECT_PREFIX = "[Token Vault]"
_HEADLINES = {
    NEEDS_RECONNECT: "Reconnect needed",
    RECOVERED: "Working again",
    REFRESH_FAILING: "Refresh failing",
    EXPIRING: "Expiring soon",
    CLIENT_SECRET_EXPIRING: "Client secret expiring",
}


@dataclass(frozen=True)
class Item:
    """One connection (or provider) an alert is about."""

    event: str
    headline: str
    provider: str
    provider_title: str
    account: str | None
    connection_id: int | None
    status: str | None
    reason: str
    url: str
    reconnect_url: str | None


@dataclass(frozen=True)
class Message:
    """One alert, ready to be put in any channel's form."""

    message_id: str  # stable across retries: receivers use it to drop duplicates
    event: str
    subject: str
    headline: str
    created_at: datetime
    items: tuple[Item, ...]

    def text(self) -> str:
        """The plain-text body of the e-mail."""
        return render_template("alerts/message.txt", message=self)

    def html(self) -> str:
        """The HTML body of the e-mail."""
        return render_template("alerts/message.html", message=self)

    def slack(self) -> dict[str, Any]:
        """A Slack incoming-webhook body: mrkdwn text, a line or three per item."""
        lines = [f"*{_slack_escape(self.headline)}*"]
        for item in self.items:
            who = f"{item.provider_title}: {item.account}" if item.account else item.provider_title
            lines.append(f"• *{_slack_escape(who)}* ({_slack_escape(item.headline.lower())})")
            lines.append(f"   {_slack_escape(item.reason)}")
            links = [f"<{item.url}|Open in Token Vault>"]
            if item.reconnect_url:
                links.append(f"<{item.reconnect_url}|Reconnect link for the account's owner>")
            lines.append("   " + " · ".join(links))
        return {"text": "\n".join(lines)}

    def webhook_body(self) -> dict[str, Any]:
        """The Standard Webhooks JSON body (docs/architecture.md, "Alerts")."""
        timestamp = self.created_at.isoformat().replace("+00:00", "Z")
        if self.event == DIGEST:
            return {"type": self.event, "timestamp": timestamp,
                    "data": {"connections": [_connection_json(i) for i in self.items]}}
        if self.event == TEST:
            return {"type": self.event, "timestamp": timestamp, "data": {"message": self.headline}}
        item = self.items[0]
        if item.connection_id is None:
            return {"type": self.event, "timestamp": timestamp, "data": {"provider": {
                "key": item.provider, "title": item.provider_title, "reason": item.reason,
                "url": item.url}}}
        return {"type": self.event, "timestamp": timestamp,
                "data": {"connection": _connection_json(item), "reconnect_url": item.reconnect_url}}


def compose(
    notification: Notification,
    children: list[Notification],
    reconnect_urls: dict[int, str | None],
) -> Message:
    """The message of ``notification`` (a digest lists ``children``); links from
    ``VAULT_BASE_URL``, reconnect links as decrypted by the caller (by notification id)."""
    about = children if notification.event == DIGEST else [notification]
    items = tuple(_item(n, reconnect_urls.get(n.id)) for n in about)
    if notification.event == TEST:
        headline = "Test alert: this channel works."
        subject = f"{SUBJECT_PREFIX} Test alert"
    elif notification.event == DIGEST:
        title = items[0].provider_title if items else notification.provider or "?"
        headline = f"{len(items)} {title} connections need attention"
        subject = f"{SUBJECT_PREFIX} {headline}"
    else:
        first = items[0]
        headline = first.headline
        who = first.provider_title
        if first.account:
            who = f"{first.account} at {who}"
        subject = f"{SUBJECT_PREFIX} {headline}: {who}"
    return Message(
        message_id=f"tv_notification_{notification.id}",
        event=notification.event,
        subject=" ".join(subject.split()),  # never a header injection
        headline=headline,
        created_at=notification.created_at,
        items=items if notification.event != TEST else (),
    )


def _item(notification: Notification, reconnect_url: str | None) -> Item:
    details = notification.details or {}
    key = notification.provider or str(details.get("provider") or "")
    provider = current_app.extensions["providers"].get(key)
    base = current_app.config["VAULT_BASE_URL"] or ""
    if notification.connection_id is not None:
        url = f"{base}/connections/{notification.connection_id}"
    else:
        url = f"{base}/"
    return Item(
        event=notification.event,
        headline=_HEADLINES.get(notification.event, notification.event),
        provider=key,
        provider_title=provider.title if provider is not None else key,
        account=details.get("account"),
        connection_id=notification.connection_id,
        status=details.get("status"),
        reason=str(details.get("reason") or ""),
        url=url,
        reconnect_url=reconnect_url,
    )


def _connection_json(item: Item) -> dict[str, Any]:
    return {
        "id": item.connection_id,
        "provider": item.provider,
        "account": item.account,
        "status": item.status,
        "reason": item.reason,
        "url": item.url,
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
