"""Service keys: the API keys integrations use to fetch access tokens.

A key is shown once, when it is created. The database keeps its SHA-256 hash (a key has 256
random bits, so a fast hash is enough: there is nothing to brute-force) and a short prefix
that identifies it in lists without revealing it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    CTE,
    ColumnElement,
    Integer,
    Table,
    Update,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from vault import audit
from vault.extensions import db
from vault.models import Connection, ConnectionConsumer, ConnectionTag, ServiceKey, User, utcnow
from vault.services import throttle
from vault.services.ownership import OwnershipError, tags_of

KEY_PREFIX = "tvk_"
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 6
# last_used_at is a hint for operators, not an audit record: writing it on every request
# would add a row update to each token hand-out, so it moves at most once a minute. The same
# holds for a consumer's last fetch (connection_consumers).
LAST_USED_RESOLUTION = timedelta(minutes=1)
# How long a rotated key's previous secret keeps working unless told otherwise, and at most.
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=30)
# An expiry is given in whole days: at least one, at most ten years.
MIN_LIFETIME = timedelta(days=1)
MAX_LIFETIME = timedelta(days=3650)
# What a key's public prefix may look like: anything else presented is not shown in the audit.
_PUBLIC_PREFIX = re.compile(
    rf"^{KEY_PREFIX}[A-Za-z0-9_-]{{{DISPLAY_PREFIX_LENGTH - len(KEY_PREFIX)}}}"
)
# Keys this process has authenticated, by hash (never the key itself): what the token API's
# one-statement hand-out builds its statement from. Only a hint, never trusted: that statement
# checks the key again (live_key_matches, same restrictions: still_as_known) and the request
# takes the long way when it does not match. Bounded: emptied when full.
_KNOWN_KEYS: dict[str, AuthenticatedKey] = {}
KNOWN_KEYS_LIMIT = 1000


class ServiceKeyError(ValueError):
    """A service key cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class AuthenticatedKey:
    """The key a request presented, detached from any session."""

    id: int
    name: str
    allowed_providers: tuple[str, ...]
    allowed_tags: tuple[str, ...] = ()

    def allows(self, provider: str) -> bool:
        """True when this key may read connections of ``provider`` (empty list: all).

        The provider half of :meth:`may_read` only: a tag-restricted key still needs
        :meth:`may_read` for any particular connection.
        """
        return not self.allowed_providers or provider in self.allowed_providers

    def may_read(self) -> ColumnElement[bool]:
        """SQL condition on ``connections``: the rows this key may list and fetch.

        The one place a key's restrictions are decided: its providers (empty: all) and its
        tags (empty: any; else the connection carries at least one of them).
        """
        return readable_by(self.allowed_providers, self.allowed_tags)

    @property
    def actor(self) -> str:
        return f"service:{self.name}"


def generate_key() -> str:
    """A new random service key (``tvk_`` + 43 URL-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 digest stored for a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(
    name: str,
    providers: list[str],
    known_providers: set[str],
    *,
    tags: Sequence[str] = (),
    expires_in: timedelta | None = None,
    actor: User | str = "cli",
) -> tuple[ServiceKey, str]:
    """Create a key named ``name`` (audited, not committed); returns the row and the key.

    ``tags`` restrict it to connections carrying one of them (normalised by
    :func:`~vault.services.ownership.tags_of`); ``expires_in`` ends it that long from
    now. ``actor`` (a user or ``cli``) is recorded as its creator.
    """
    name = name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise ServiceKeyError("the name must be 1 to 100 printable characters")
    if db.session.scalar(select(ServiceKey.id).where(ServiceKey.name == name)) is not None:
        raise ServiceKeyError(f"a service key named {name!r} exists already")
    unknown = sorted(set(providers) - known_providers)
    if unknown:
        configured = ", ".join(sorted(known_providers)) or "none"
        raise ServiceKeyError(f"unknown provider {unknown[0]!r}; configured: {configured}")
    try:
        allowed_tags = tags_of(tags)
    except OwnershipError as error:
        raise ServiceKeyError(str(error)) from None
    now = utcnow()
    key = generate_key()
    row = ServiceKey(
        name=name,
        key_prefix=key[:DISPLAY_PREFIX_LENGTH],
        key_hash=hash_key(key),
        allowed_providers=sorted(set(providers)),
        allowed_tags=allowed_tags,
        created_at=now,
        created_by=actor if isinstance(actor, str) else actor.email,
        expires_at=_expiry(now, expires_in),
    )
    db.session.add(row)
    db.session.flush()
    audit.record("service_key.created", target=name, actor=actor, detail=_describe(row))
    return row, key


def list_keys() -> list[ServiceKey]:
    """Every service key, revoked ones included, by name."""
    return list(db.session.scalars(select(ServiceKey).order_by(ServiceKey.name)))


def revoke_key(name: str, *, actor: User | str = "cli") -> ServiceKey:
    """Revoke the key named ``name`` (audited, not committed); revoking twice is an error.

    Both its secrets stop at once, the previous one of a rotation included.
    """
    row = _named(name)
    if row.revoked_at is not None:
        raise ServiceKeyError(f"service key {name!r} was revoked already")
    row.revoked_at = utcnow()
    audit.record("service_key.revoked", target=name, actor=actor)
    return row


def rotate_key(
    name: str, overlap: timedelta = DEFAULT_OVERLAP, *, actor: User | str = "cli"
) -> tuple[ServiceKey, str]:
    """Give the key named ``name`` a new secret (audited, not committed); returns it.

    The key keeps its name, restrictions, expiry and consumers. Its current secret becomes the
    previous one and keeps working for ``overlap`` (zero: it stops now); a secret that was
    already the previous one (a second rotation inside an overlap) stops at once.
    """
    if not timedelta(0) <= overlap <= MAX_OVERLAP:
        most = int(MAX_OVERLAP.total_seconds() // 3600)
        raise ServiceKeyError(f"the overlap must be 0 to {most} hours")
    row = _named(name)
    now = utcnow()
    if row.revoked_at is not None:
        raise ServiceKeyError(f"service key {name!r} is revoked; create a new one instead")
    if row.expires_at is not None and row.expires_at <= now:
        raise ServiceKeyError(f"service key {name!r} has expired; change its expiry first")
    key = generate_key()
    row.previous_key_prefix, row.previous_key_hash = row.key_prefix, row.key_hash
    row.previous_key_expires_at = now + overlap
    row.key_prefix, row.key_hash = key[:DISPLAY_PREFIX_LENGTH], hash_key(key)
    row.rotated_at = now
    hours = overlap.total_seconds() / 3600
    audit.record(
        "service_key.rotated", target=name, actor=actor,
        detail=f"previous secret {row.previous_key_prefix}… works for {hours:g} more hours",
    )
    return row, key


def set_expiry(name: str, expires_in: timedelta | None, *, actor: User | str = "cli") -> ServiceKey:
    """End the key named ``name`` ``expires_in`` from now, or never (None); audited."""
    row = _named(name)
    if row.revoked_at is not None:
        raise ServiceKeyError(f"service key {name!r} is revoked")
    row.expires_at = _expiry(utcnow(), expires_in)
    when = row.expires_at.strftime("%Y-%m-%d %H:%M UTC") if row.expires_at else "never"
    audit.record("service_key.expiry_changed", target=name, actor=actor, detail=f"expires {when}")
    return row


def _named(name: str) -> ServiceKey:
    row = db.session.scalar(select(ServiceKey).where(ServiceKey.name == name))
    if row is None:
        raise ServiceKeyError(f"no service key is named {name!r}")
    return row


def _expiry(now: datetime, expires_in: timedelta | None) -> datetime | None:
    if expires_in is None:
        return None
    if not MIN_LIFETIME <= expires_in <= MAX_LIFETIME:
        raise ServiceKeyError(f"the expiry must be 1 to {MAX_LIFETIME.days} days from now")
    return now + expires_in


def _describe(row: ServiceKey) -> str:
    # The audit detail: restrictions and expiry, never a secret.
    providers = ", ".join(row.allowed_providers) or "all providers"
    tags = ", ".join(row.allowed_tags) or "any"
    expiry = row.expires_at.strftime("%Y-%m-%d %H:%M UTC") if row.expires_at else "never"
    return f"providers: {providers}; tags: {tags}; expires: {expiry}"


def readable_by(providers: Sequence[str], tags: Sequence[str]) -> ColumnElement[bool]:
    """SQL condition on ``connections`` for a key restricted to ``providers`` and ``tags``."""
    conditions: list[ColumnElement[bool]] = []
    if providers:
        conditions.append(Connection.provider.in_(list(providers)))
    if tags:
        conditions.append(
            exists().where(
                ConnectionTag.connection_id == Connection.id, ConnectionTag.tag.in_(list(tags))
            )
        )
    return and_(true(), *conditions)


def live_key_matches(
    key_hash: str | ColumnElement[str], now: datetime | ColumnElement[datetime]
) -> ColumnElement[bool]:
    """SQL condition on ``service_keys``: the key whose secret hashes to ``key_hash`` and works
    at ``now``.

    A key works when it is not revoked and not past its expiry; after a rotation its previous
    secret works too, until the overlap ends. The one place this is decided.
    """
    not_expired = or_(ServiceKey.expires_at.is_(None), ServiceKey.expires_at > now)
    return and_(
        ServiceKey.revoked_at.is_(None),
        not_expired,
        or_(
            ServiceKey.key_hash == key_hash,
            and_(
                ServiceKey.previous_key_hash == key_hash,
                ServiceKey.previous_key_expires_at > now,
            ),
        ),
    )


def authenticate(presented: str | None) -> AuthenticatedKey | None:
    """The live key matching ``presented``, or None (unknown, malformed, revoked or expired).

    The lookup is by hash, so the time it takes says nothing about any stored key. Commits
    (at most once a minute per key) when it moves the key's ``last_used_at`` on.
    """
    if not presented or not presented.startswith(KEY_PREFIX) or len(presented) > 200:
        return None
    row = db.session.execute(
        select(
            ServiceKey.id, ServiceKey.name, ServiceKey.allowed_providers,
            ServiceKey.allowed_tags, ServiceKey.last_used_at,
        ).where(live_key_matches(hash_key(presented), utcnow()))
    ).one_or_none()
    if row is None:
        return None
    _touch(row.id, row.last_used_at)
    key = AuthenticatedKey(
        row.id, row.name, tuple(row.allowed_providers or ()), tuple(row.allowed_tags or ())
    )
    if len(_KNOWN_KEYS) >= KNOWN_KEYS_LIMIT:
        _KNOWN_KEYS.clear()
    _KNOWN_KEYS[hash_key(presented)] = key
    return key


def known_key(presented: str | None) -> tuple[str, AuthenticatedKey] | None:
    """The hash of ``presented`` and the key this process last authenticated with it, if any.

    A hint for building a statement, not an authentication: see :func:`still_as_known`.
    """
    if not presented or not presented.startswith(KEY_PREFIX) or len(presented) > 200:
        return None
    key_hash = hash_key(presented)
    key = _KNOWN_KEYS.get(key_hash)
    return None if key is None else (key_hash, key)


def still_as_known(key: AuthenticatedKey) -> ColumnElement[bool]:
    """SQL condition on ``service_keys`` (PostgreSQL): ``key``'s row, with the name and
    restrictions it had when this process authenticated it (so ``key.may_read()`` and its
    audit actor still hold), and live (:func:`live_key_matches` on the bound parameters
    ``presented_key_hash`` and ``now``): a key check for a statement built once per key.
    """
    def unchanged(column, values: tuple[str, ...]) -> ColumnElement[bool]:
        stored = func.coalesce(column.cast(postgresql.JSONB), literal([], postgresql.JSONB))
        return stored == literal(list(values), postgresql.JSONB)

    return and_(
        ServiceKey.id == key.id,
        ServiceKey.name == key.name,
        unchanged(ServiceKey.allowed_providers, key.allowed_providers),
        unchanged(ServiceKey.allowed_tags, key.allowed_tags),
        live_key_matches(bindparam("presented_key_hash"), bindparam("now")),
    )


def touch_if_due(key: CTE) -> Update:
    """The UPDATE moving ``last_used_at`` of the key in ``key`` (a CTE with its ``id``) to the
    bound ``now``, when :data:`LAST_USED_RESOLUTION` has passed (bound ``stale_before``).

    :func:`authenticate`'s rule, for a statement that checks the key itself. The condition is
    on the row, so concurrent requests re-check it after the first one's update: one wins.
    """
    return (
        update(ServiceKey)
        .where(
            ServiceKey.id.in_(select(key.c.id)),
            or_(ServiceKey.last_used_at.is_(None),
                ServiceKey.last_used_at < bindparam("stale_before")),
        )
        .values(last_used_at=bindparam("now"))
    )


def consumer_seen_from(source: CTE) -> tuple[postgresql.Insert, Update]:
    """:func:`record_consumer` for the connection ``id`` of each row of ``source``
    (PostgreSQL), with the bound ``consumer_key_id``, ``now`` and ``stale_before``, as two
    statements for one statement's CTEs: the row created on the first fetch, and moved when
    stale (:func:`_consumer_stale`, the upsert's own condition).

    Unlike the upsert's DO UPDATE, which locks the existing row even when its WHERE is false,
    neither touches a fresh row: concurrent hand-outs of one connection to one key do not
    queue behind each other's commits.
    """
    now = bindparam("now", type_=_CONSUMERS.c.last_fetched_at.type)
    key_id = bindparam("consumer_key_id", type_=Integer)
    first = postgresql.insert(_CONSUMERS).from_select(
        ["connection_id", "service_key_id", "first_fetched_at", "last_fetched_at"],
        select(source.c.id, key_id, now, now),
    ).on_conflict_do_nothing(index_elements=["connection_id", "service_key_id"])
    moved = (
        update(_CONSUMERS)
        .where(_CONSUMERS.c.connection_id.in_(select(source.c.id)),
               _CONSUMERS.c.service_key_id == key_id, _consumer_stale())
        .values(last_fetched_at=now)
    )
    return first, moved


def record_consumer(key_id: int, connection_id: int) -> None:
    """Note that key ``key_id`` fetched ``connection_id``'s token now (one statement).

    Creates the key's consumer row on its first fetch; afterwards moves ``last_fetched_at``
    only when it is older than :data:`LAST_USED_RESOLUTION`, so a key polling a connection
    writes at most once a minute. Not committed: it rides on the hand-out's audit row.
    """
    now = utcnow()
    connection = db.session.connection()
    connection.execute(
        _CONSUMER_SEEN[connection.dialect.name],
        {"connection_id": connection_id, "service_key_id": key_id, "first_fetched_at": now,
         "last_fetched_at": now, "stale_before": now - LAST_USED_RESOLUTION},
    )


def refuse(presented: str | None, address: str | None) -> throttle.Reservation:
    """Count a refused key against the client ``address``; audit it once per prefix and window.

    For requests :func:`authenticate` turned away (no key, a malformed, unknown or revoked
    one). Not granted: the address has used up its allowance of failures (nothing is
    recorded then). The audit row, one per key prefix, address and window, names only the
    key's public prefix, never the key; the caller commits it.
    """
    address = address or "unknown"
    reservation = throttle.reserve((throttle.API_KEY_FAILURES_PER_ADDRESS, address))
    if not reservation.granted:
        return reservation
    prefix = public_prefix(presented)
    record = throttle.API_KEY_FAILURE_RECORD
    if throttle.reserve((record, f"{prefix}\n{address}")).granted:
        minutes = int(record.window.total_seconds() // 60)
        audit.insert_now(
            "service_key.refused", target=prefix, actor="anonymous", outcome="failure",
            detail=f"{_refusal_reason(presented)}; further refusals of this prefix from this "
            f"address are not recorded for {minutes} minutes",
        )
    return reservation


def public_prefix(presented: str | None) -> str | None:
    """The public prefix of a presented key (as ``service-keys list`` shows), if it has one."""
    match = _PUBLIC_PREFIX.match(presented or "")
    return match.group(0) if match else None


def _refusal_reason(presented: str | None) -> str:
    # Only on the failure path: the one extra lookup tells a revoked key from an unknown one.
    if not presented:
        return "no service key"
    if public_prefix(presented) is None or len(presented) > 200:
        return "not a service key"
    name = db.session.scalar(
        select(ServiceKey.name).where(
            ServiceKey.key_hash == hash_key(presented), ServiceKey.revoked_at.is_not(None)
        )
    )
    return "unknown key" if name is None else f"revoked key {name!r}"


def _touch(key_id: int, last_used_at: datetime | None) -> None:
    now = utcnow()
    if last_used_at is not None and now - last_used_at < LAST_USED_RESOLUTION:
        return
    db.session.execute(update(ServiceKey).where(ServiceKey.id == key_id).values(last_used_at=now))
    db.session.commit()


def _consumer_stale() -> ColumnElement[bool]:
    # A consumer row older than LAST_USED_RESOLUTION (bound stale_before) moves on.
    return _CONSUMERS.c.last_fetched_at < bindparam("stale_before")


def _consumer_upsert(
    insert: postgresql.Insert | sqlite.Insert,
) -> postgresql.Insert | sqlite.Insert:
    # ON CONFLICT ... DO UPDATE ... WHERE: an existing row moves only once a minute.
    return insert.on_conflict_do_update(
        index_elements=["connection_id", "service_key_id"],
        set_={"last_fetched_at": insert.excluded.last_fetched_at},
        where=_consumer_stale(),
    )


_CONSUMERS = cast(Table, ConnectionConsumer.__table__)
_CONSUMER_SEEN = {
    backend.dialect.name: _consumer_upsert(backend.insert(_CONSUMERS))
    for backend in (postgresql, sqlite)
}
