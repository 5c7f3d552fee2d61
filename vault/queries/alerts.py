"""Read side of the alerts page and of /health's channel warning: deliveries and attempts.

Channels are named here only as the deliveries' ``channel`` column; which are configured is
the caller's to say (vault/alerts). Never decrypts: a reconnect link is never read here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from vault.extensions import db
from vault.models import (
    DeliveryAttempt,
    DeliveryStatus,
    Notification,
    NotificationDelivery,
)

# A channel "keeps failing" once a delivery has failed this many times in a row, or one was
# abandoned within the last day.
FAILING_AFTER_ATTEMPTS = 3
RECENT = 50


@dataclass(frozen=True)
class ChannelActivity:
    """What a channel did lately: its last delivery and its last attempt."""

    last_delivered_at: datetime | None
    last_attempt_at: datetime | None
    last_attempt_ok: bool | None
    last_error: str | None
    pending: int


@dataclass(frozen=True)
class FailingChannel:
    """A channel that keeps failing: how many deliveries wait, and its last error."""

    channel: str
    waiting: int
    last_error: str | None


def channel_activity(channel: str) -> ChannelActivity:
    """The last delivery and the last attempt of ``channel``, and how many deliveries wait."""
    last_delivered = db.session.scalar(
        select(func.max(NotificationDelivery.delivered_at)).where(
            NotificationDelivery.channel == channel
        )
    )
    last = db.session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.channel == channel)
        .order_by(DeliveryAttempt.attempted_at.desc(), DeliveryAttempt.id.desc())
        .limit(1)
    ).first()
    pending = db.session.scalar(
        select(func.count(NotificationDelivery.id)).where(
            NotificationDelivery.channel == channel,
            NotificationDelivery.status == DeliveryStatus.PENDING.value,
        )
    )
    return ChannelActivity(
        last_delivered_at=last_delivered,
        last_attempt_at=last.attempted_at if last else None,
        last_attempt_ok=last.ok if last else None,
        last_error=last.error if last else None,
        pending=pending or 0,
    )


def failing_channels(now: datetime, configured: Collection[str]) -> list[FailingChannel]:
    """The ``configured`` channels that keep failing (see :data:`FAILING_AFTER_ATTEMPTS`)."""
    stuck = (
        (NotificationDelivery.status == DeliveryStatus.PENDING.value)
        & (NotificationDelivery.attempts >= FAILING_AFTER_ATTEMPTS)
    ) | (
        (NotificationDelivery.status == DeliveryStatus.ABANDONED.value)
        & (NotificationDelivery.next_attempt_at >= now - timedelta(days=1))
    )
    rows = db.session.execute(
        select(NotificationDelivery.channel, func.count(NotificationDelivery.id))
        .where(stuck, NotificationDelivery.channel.in_(list(configured)))
        .group_by(NotificationDelivery.channel)
        .order_by(NotificationDelivery.channel)
    ).all()
    return [FailingChannel(name, count, channel_activity(name).last_error) for name, count in rows]


def recent_notifications(limit: int = RECENT) -> list[Notification]:
    """The newest alerts, each with its deliveries and their attempts."""
    return list(
        db.session.scalars(
            select(Notification)
            .options(
                selectinload(Notification.deliveries).selectinload(
                    NotificationDelivery.attempts_made
                )
            )
            .order_by(Notification.id.desc())
            .limit(limit)
        )
    )
