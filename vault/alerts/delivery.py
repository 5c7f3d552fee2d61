"""From the outbox to the channels: dispatch, claim, send, record, retry.

1. :func:`dispatch` claims the alerts no worker has taken yet (a conditional UPDATE of
   ``dispatched_at``: two workers never take the same one), makes reconnect links for
   ``needs_reconnect`` alerts (kept encrypted on the alert), folds five or more breakages of
   one provider into one digest for the channels read by people, and writes one delivery per
   alert and channel, all in one transaction.
2. :func:`deliver_pending` claims one due delivery at a time (a conditional UPDATE that sets a
   random claim and a lease: it works alike on SQLite and PostgreSQL), sends it with no
   transaction open, then records the attempt and the outcome, if the claim is still its own.
   A failure is retried with exponential back-off; after :data:`GIVE_UP_AFTER` it is
   abandoned (still listed). A worker that dies mid-send leaves a claim that lapses, so the
   delivery is sent again: at least once, with the same ``webhook-id`` / Message-ID.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, delete, exists, or_, select, update

from vault.alerts.channels import TIMEOUT_SECONDS, Channel, ChannelError
from vault.alerts.events import BREAKING, DIGEST, NEEDS_RECONNECT, TEST
from vault.alerts.messages import Message, compose
from vault.crypto import DecryptionError
from vault.extensions import db
from vault.models import (
    Connection,
    ConnectionStatus,
    DeliveryAttempt,
    DeliveryStatus,
    Notification,
    NotificationDelivery,
    utcnow,
)
from vault.services.reconnect_links import LinkError, issue_reconnect_link
from vault.tokens.store import sanitize_error, token_vault

DIGEST_AT = 5  # breakages of one provider in one dispatch that go to people as one digest
DISPATCH_BATCH = 500
# A claimed delivery is someone's for this long: an e-mail is a few round trips, each bounded.
LEASE = timedelta(seconds=4 * TIMEOUT_SECONDS + 20)
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(days=3)
# Alerts whose deliveries are all done are kept this long (the page lists the newest), then
# deleted with their deliveries and attempts.
KEEP_FOR = timedelta(days=90)


@dataclass
class DeliveryReport:
    """What one :func:`deliver_pending` run did."""

    delivered: int = 0
    failed: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0


def reconnect_url_aad(notification_id: int) -> bytes:
    """Associated data binding an encrypted reconnect link to its alert."""
    return f"notification:{notification_id}:reconnect_url".encode()


def channels() -> list[Channel]:
    """This app's configured channels."""
    return list(current_app.extensions["alert_channels"])


def dispatch(now: datetime) -> int:
    """Turn undispatched alerts into deliveries (see the module's docstring); commits.

    Returns how many alerts this call took.
    """
    ids = db.session.scalars(
        select(Notification.id)
        .where(Notification.dispatched_at.is_(None))
        .order_by(Notification.id)
        .limit(DISPATCH_BATCH)
    ).all()
    if not ids:
        db.session.rollback()
        return 0
    claimed = db.session.scalars(
        update(Notification)
        .where(Notification.id.in_(ids), Notification.dispatched_at.is_(None))
        .values(dispatched_at=now)
        .returning(Notification.id)
        .execution_options(synchronize_session=False)
    ).all()
    notifications = db.session.scalars(
        select(Notification).where(Notification.id.in_(claimed)).order_by(Notification.id)
    ).all()
    targets = channels()
    breakages: dict[str, list[Notification]] = defaultdict(list)
    for notification in notifications:
        if notification.event in BREAKING and notification.provider:
            breakages[notification.provider].append(notification)
        if notification.event == NEEDS_RECONNECT and targets:
            _attach_reconnect_link(notification, now)
    if any(channel.for_people for channel in targets):
        for provider, group in breakages.items():
            if len(group) >= DIGEST_AT:
                _digest(provider, group, targets, now)
    for notification in notifications:
        for channel in targets:
            if not (notification.digest_id and channel.for_people):
                db.session.add(NotificationDelivery(
                    notification_id=notification.id, channel=channel.name, next_attempt_at=now
                ))
    db.session.commit()
    return len(notifications)


def _digest(provider: str, group: list[Notification], targets: list[Channel], now: datetime):
    digest = Notification(
        event=DIGEST,
        dedupe_key=f"{DIGEST}:{provider}:{group[0].id}",
        provider=provider,
        details={"provider": provider, "count": len(group)},
        created_at=now,
        dispatched_at=now,
    )
    db.session.add(digest)
    db.session.flush()
    for notification in group:
        notification.digest_id = digest.id
    for channel in targets:
        if channel.for_people:
            db.session.add(NotificationDelivery(
                notification_id=digest.id, channel=channel.name, next_attempt_at=now
            ))


def _attach_reconnect_link(notification: Notification, now: datetime) -> None:
    """A reconnect link for the alert's connection, if it still needs one, stored encrypted."""
    connection = (
        db.session.get(Connection, notification.connection_id)
        if notification.connection_id is not None else None
    )
    if connection is None or connection.status != ConnectionStatus.NEEDS_RECONNECT.value:
        return
    try:
        url = issue_reconnect_link(connection, created_by=None, now=now)
    except LinkError:
        return  # an API-key provider, or one gone from the file: the page says what to do
    notification.reconnect_url_ciphertext = token_vault.cipher.encrypt(
        url, aad=reconnect_url_aad(notification.id)
    )


def deliver_pending(
    now: datetime,
    *,
    stop: Callable[[], bool] = lambda: False,
    notification_ids: Collection[int] | None = None,
) -> DeliveryReport:
    """Send every delivery due at ``now`` (only those of ``notification_ids`` if given).

    A channel that fails is not tried again in this run: its other deliveries wait for
    their next attempt instead of each waiting out a timeout now.
    """
    by_name = {channel.name: channel for channel in channels()}
    down: set[str] = set()
    report = DeliveryReport()
    while not stop():
        names = [name for name in by_name if name not in down]
        if not names:
            break
        moment = max(now, utcnow())
        claimable = and_(
            NotificationDelivery.status == DeliveryStatus.PENDING.value,
            NotificationDelivery.next_attempt_at <= moment,
            or_(
                NotificationDelivery.claimed_until.is_(None),
                NotificationDelivery.claimed_until < moment,
            ),
            NotificationDelivery.channel.in_(names),
        )
        if notification_ids is not None:
            claimable = and_(claimable, NotificationDelivery.notification_id.in_(notification_ids))
        candidate = db.session.scalar(
            select(NotificationDelivery.id)
            .where(claimable)
            .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
            .limit(1)
        )
        if candidate is None:
            db.session.rollback()
            break
        claim = secrets.token_hex(16)
        taken = db.session.execute(
            update(NotificationDelivery)
            .where(NotificationDelivery.id == candidate, claimable)
            .values(claim=claim, claimed_until=moment + LEASE)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        db.session.commit()
        if not taken:
            continue  # another worker claimed it first
        delivery = db.session.get(NotificationDelivery, candidate)
        assert delivery is not None
        channel_name = delivery.channel
        message = message_for(delivery.notification)
        db.session.rollback()  # nothing held open while the channel is called
        error = _send(by_name[channel_name], message)
        _record(candidate, claim, error, moment)
        if error is None:
            report.delivered += 1
        else:
            report.failed += 1
            down.add(channel_name)
    return report


def message_for(notification: Notification) -> Message:
    """The message of one alert, its reconnect links decrypted (none if undecryptable)."""
    about = [notification]
    if notification.event == DIGEST:
        about = list(db.session.scalars(
            select(Notification)
            .where(Notification.digest_id == notification.id)
            .order_by(Notification.id)
        ))
    return compose(notification, about, {n.id: _reconnect_url(n) for n in about})


def _reconnect_url(notification: Notification) -> str | None:
    if notification.reconnect_url_ciphertext is None:
        return None
    try:
        return token_vault.cipher.decrypt(
            notification.reconnect_url_ciphertext, aad=reconnect_url_aad(notification.id)
        )
    except DecryptionError:
        return None  # e.g. its secret was retired: the alert goes out without the link


def _send(channel: Channel, message: Message) -> str | None:
    try:
        channel.send(message)
    except ChannelError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - a bug in one channel must not stop the others
        current_app.logger.exception("alert channel %s failed unexpectedly", channel.name)
        return sanitize_error(f"unexpected {type(error).__name__}")
    return None


def _record(delivery_id: int, claim: str, error: str | None, moment: datetime) -> None:
    """Record one attempt and, while the claim is still ours, the delivery's new state."""
    attempted_at = utcnow()
    delivery = db.session.get(NotificationDelivery, delivery_id)
    assert delivery is not None
    db.session.add(DeliveryAttempt(
        delivery_id=delivery_id, channel=delivery.channel, attempted_at=attempted_at,
        ok=error is None, error=error,
    ))
    if delivery.claim == claim:
        delivery.attempts += 1
        delivery.claim = None
        delivery.claimed_until = None
        delivery.last_error = error
        if error is None:
            delivery.status = DeliveryStatus.DELIVERED.value
            delivery.delivered_at = attempted_at
        elif delivery.notification.created_at < moment - GIVE_UP_AFTER:
            delivery.status = DeliveryStatus.ABANDONED.value
        else:
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (delivery.attempts - 1))
            delivery.next_attempt_at = moment + delay
        if delivery.status != DeliveryStatus.PENDING.value:
            db.session.flush()  # the ended delivery counts in the check below
            clear_spent_links(delivery.notification_id)
    db.session.commit()
    if error is not None:
        current_app.logger.warning(
            "alert delivery %s over %s failed: %s", delivery_id, delivery.channel, error
        )


def clear_spent_links(alert_id: int | None = None) -> int:
    """Drop the encrypted reconnect link of every alert no channel still has to take.

    A link waits on its alert only until every delivery that carries it (the alert's own,
    and its digest's) has ended, delivered or abandoned (docs/security.md). With
    ``alert_id``: that alert and, if it is a digest, the alerts it folds; without: all (the
    prune job's sweep, which also catches two last deliveries ending at once, each seeing
    the other still pending). The caller commits; returns how many links went.
    """
    carriers = or_(
        NotificationDelivery.notification_id == Notification.id,
        NotificationDelivery.notification_id == Notification.digest_id,
    )
    waiting = exists().where(carriers, NotificationDelivery.status == DeliveryStatus.PENDING.value)
    statement = update(Notification).where(
        Notification.reconnect_url_ciphertext.is_not(None),
        Notification.dispatched_at.is_not(None),
        ~waiting,
    )
    if alert_id is not None:
        statement = statement.where(
            or_(Notification.id == alert_id, Notification.digest_id == alert_id)
        )
    return db.session.execute(
        statement.values(reconnect_url_ciphertext=None)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]


def send_test_alert(requested_by: str, now: datetime) -> Notification:
    """A test alert to every channel, dispatched at once (the caller commits, then may
    :func:`deliver_pending` it)."""
    notification = Notification(
        event=TEST,
        dedupe_key=f"{TEST}:{secrets.token_hex(8)}",
        details={"requested_by": requested_by},
        created_at=now,
        dispatched_at=now,
    )
    db.session.add(notification)
    db.session.flush()
    for channel in channels():
        db.session.add(NotificationDelivery(
            notification_id=notification.id, channel=channel.name, next_attempt_at=now
        ))
    return notification



def prune(now: datetime) -> int:
    """Delete alerts older than :data:`KEEP_FOR` with nothing left to send; commits.

    Also drops any reconnect link left on an alert that is done (:func:`clear_spent_links`).

    Returns how many alerts went (their deliveries and attempts go with them).
    """
    waiting = exists().where(
        NotificationDelivery.notification_id == Notification.id,
        NotificationDelivery.status == DeliveryStatus.PENDING.value,
    )
    old = select(Notification.id).where(
        Notification.created_at < now - KEEP_FOR,
        Notification.dispatched_at.is_not(None),
        ~waiting,
    )
    ids = list(db.session.scalars(old))
    if ids:
        deliveries = select(NotificationDelivery.id).where(
            NotificationDelivery.notification_id.in_(ids)
        )
        db.session.execute(delete(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(deliveries)))
        db.session.execute(
            delete(NotificationDelivery).where(NotificationDelivery.notification_id.in_(ids))
        )
        db.session.execute(
            update(Notification).where(Notification.digest_id.in_(ids)).values(digest_id=None)
        )
        db.session.execute(delete(Notification).where(Notification.id.in_(ids)))
    clear_spent_links()
    db.session.commit()
    return len(ids)
