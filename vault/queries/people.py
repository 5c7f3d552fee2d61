"""The people page (``/people/<email>``) and the consumers a connection's page lists.

A person is an e-mail address: a staff user's, or anyone's named as a connection's owner. The
page lists what they connected (``created_by``) or own (``owner_email``), with each
connection's health from the expression every page shares
(:func:`vault.queries.connections.health_source`), its tags and the service keys that used
it (``connection_consumers``, kept up to date by the token API: no audit scan). A fixed
number of statements however many connections there are; nothing here decrypts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, case, func, or_, select

from vault.extensions import db
from vault.models import Connection, ConnectionConsumer, ServiceKey, User
from vault.queries.connections import at, health_source, tags_by_connection

# More than anyone should own; past it the page says how many more and links to the list.
PERSON_LIMIT = 200


@dataclass(frozen=True)
class Consumer:
    """A service key that fetched a connection's token, and when it last did."""

    key_id: int
    name: str
    key_prefix: str
    revoked: bool
    first_fetched_at: datetime
    last_fetched_at: datetime


@dataclass(frozen=True)
class PersonConnection:
    """One connection on a person's page and why it is there."""

    row: Row
    owns: bool
    connected: bool
    tags: list[str]
    consumers: list[Consumer]


@dataclass(frozen=True)
class Person:
    """Everything the people page shows about one e-mail address."""

    email: str
    user: User | None
    connections: list[PersonConnection]
    total: int  # connected or owned, listed or not
    owned: int  # owned, listed or not


def consumers_of(connection_ids: list[int]) -> dict[int, list[Consumer]]:
    """The service keys that fetched each connection's token, most recent fetch first."""
    consumers: dict[int, list[Consumer]] = {}
    if not connection_ids:
        return consumers
    rows = db.session.execute(
        select(
            ConnectionConsumer.connection_id, ServiceKey.id, ServiceKey.name,
            ServiceKey.key_prefix, ServiceKey.revoked_at, ConnectionConsumer.first_fetched_at,
            ConnectionConsumer.last_fetched_at,
        )
        .join(ServiceKey, ServiceKey.id == ConnectionConsumer.service_key_id)
        .where(ConnectionConsumer.connection_id.in_(connection_ids))
        .order_by(ConnectionConsumer.last_fetched_at.desc(), ServiceKey.name)
    )
    for connection_id, key_id, name, prefix, revoked_at, first, last in rows:
        consumers.setdefault(connection_id, []).append(
            Consumer(key_id, name, prefix, revoked_at is not None, first, last)
        )
    return consumers


def person(email: str, now: datetime | None = None, limit: int = PERSON_LIMIT) -> Person:
    """What ``email`` (lower-cased) connected or owns: active ones first, then by account."""
    user = db.session.scalar(select(User).where(User.email == email))
    mine = [Connection.owner_email == email]
    if user is not None:
        mine.append(Connection.created_by_id == user.id)
    source = health_source()
    total, owned = db.session.execute(
        select(func.count(Connection.id),
               func.count(case((Connection.owner_email == email, 1))))
        .where(or_(*mine))
    ).one()
    rows = list(db.session.execute(
        source.rows().add_columns(Connection.created_by_id).where(or_(*mine))
        .order_by(
            (Connection.status == "disconnected").asc(), Connection.provider,
            func.lower(func.coalesce(Connection.account_email, Connection.account_name,
                                     Connection.account_subject)),
            Connection.id,
        )
        .limit(limit),
        at(now),
    ))
    ids = [row.id for row in rows]
    tags = tags_by_connection(ids)
    consumers = consumers_of(ids)
    return Person(
        email=email,
        user=user,
        connections=[
            PersonConnection(
                row=row,
                owns=row.owner_email == email,
                connected=user is not None and row.created_by_id == user.id,
                tags=tags.get(row.id, []),
                consumers=consumers.get(row.id, []),
            )
            for row in rows
        ],
        total=total,
        owned=owned,
    )

