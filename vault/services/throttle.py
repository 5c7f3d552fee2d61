"""Throttling counted in the database: exact across workers and instances, without Redis.

Each allowance (:class:`Rule`) counts attempts per subject (an e-mail address, a client
address, a device, a user) in fixed windows that open at the first counted attempt. A
*reservation* takes an attempt from every counter it names in one short transaction of its
own (one ``INSERT ... ON CONFLICT (key) DO UPDATE ... RETURNING`` per counter, PostgreSQL and
SQLite 3.35+ alike), committed before the caller does the costly or risky thing (an Argon2
check): however many requests arrive at once, on however many workers, at most ``limit`` of
them are granted in a window. A refused reservation takes nothing; a granted one can be given
back (:func:`release`) when the attempt turned out well, so successes cost nothing.

Counters are keyed by an HMAC (keyed by ``SECRET_KEY``) of the allowance and the subject: the
table never holds an e-mail or a client address, and its keys cannot be checked against a
list of guesses without the secret.

Sign-in also knows *device cookies* (OWASP, "Slow Down Online Guessing Attacks with Device
Cookies"): a browser that once signed in to an account with its password carries a signed
cookie naming that account; its attempts for that account count against the device alone, so
failures from elsewhere can never lock the account's owner out.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import case
from sqlalchemy.sql.dml import ReturningInsert

from vault.extensions import db
from vault.models import ThrottleCounter, User, utcnow


@dataclass(frozen=True)
class Rule:
    """An allowance: at most ``limit`` counted attempts per subject in each ``window``."""

    scope: str
    limit: int
    window: timedelta


# The allowances, in one place. Constants rather than settings: they are part of the security
# contract docs/security.md states, the same on every instance, which must agree on them.
_WINDOW = timedelta(minutes=15)
# Wrong passwords per account and per client address (as before this table existed).
SIGN_IN_PER_EMAIL = Rule("sign-in:email", 10, _WINDOW)
SIGN_IN_PER_ADDRESS = Rule("sign-in:address", 10, _WINDOW)
# Wrong passwords from a browser holding the account's device cookie: only its own bucket.
SIGN_IN_PER_DEVICE = Rule("sign-in:device", 10, _WINDOW)
# Wrong current passwords on the change-password form, per signed-in user.
PASSWORD_CHANGE_PER_USER = Rule("password-change:user", 10, _WINDOW)
# Refused service keys per client address. Integrations poll, so a misconfigured one may
# fail every minute; 20 leaves room for that. A key is checked before this counter (a valid
# key is never slowed), so it bounds the noise and the audit, not guessing: 256-bit keys are
# not guessed.
API_KEY_FAILURES_PER_ADDRESS = Rule("api-key-failure:address", 20, _WINDOW)
# One audit row per key prefix and address and window: the second attempt is refused.
API_KEY_FAILURE_RECORD = Rule("api-key-failure:record", 1, _WINDOW)
# Connect callbacks from browsers without an admin session (stale links, probes), per address.
ANONYMOUS_CALLBACKS_PER_ADDRESS = Rule("callback:address", 20, _WINDOW)
# Requests to the reconnect and connect link pages (open, start, callback), per address. An
# owner needs three or four; a link's 256-bit token is not guessed, so this bounds noise.
LINK_PAGES_PER_ADDRESS = Rule("link:address", 30, _WINDOW)

DEVICE_COOKIE_LIFETIME = timedelta(days=180)
_DEVICE_SALT = "token-vault/device-cookie"  # its own salt: no other signed value passes for one
_KEY_LABEL = b"token-vault/throttle-key"
_SWEEP_BATCH = 500  # ended counters deleted at most per reservation that opens a window


@dataclass(frozen=True)
class Reservation:
    """What :func:`reserve` decided.

    ``granted``: the attempt may go ahead. ``retry_after``: seconds until a refused attempt
    may be tried again. ``first``: every counter charged opened a new window with this
    attempt (to record something once per window). ``charged``: the counters and the end
    of their windows, for :func:`release`.
    """

    granted: bool
    retry_after: int = 0
    first: bool = False
    charged: tuple[tuple[str, datetime], ...] = ()


def reserve(*charges: tuple[Rule, str]) -> Reservation:
    """Take one attempt from each ``(rule, subject)`` counter, all or nothing; commits.

    Granted when every counter stays within its limit. Otherwise nothing is taken (the
    transaction is rolled back) and ``retry_after`` says when the fullest window ends.
    """
    now = utcnow()
    # Counters are always locked in the same order, so two reservations sharing two counters
    # cannot deadlock on PostgreSQL.
    planned = sorted(
        ((_counter_key(rule, subject), rule) for rule, subject in charges), key=lambda kr: kr[0]
    )
    with db.engine.connect() as connection, connection.begin() as transaction:
        counted = [(key, rule, *_take(connection, key, rule, now)) for key, rule in planned]
        over = [ends_at for _key, rule, hits, ends_at in counted if hits > rule.limit]
        if over:
            transaction.rollback()
            # From now, not from when the reservation began: it may have waited for a lock.
            return Reservation(False, retry_after=_seconds_until(max(over), utcnow()))
        first = all(hits == 1 for _key, _rule, hits, _ends_at in counted)
        if any(hits == 1 for _key, _rule, hits, _ends_at in counted):
            _sweep(connection, now)
    return Reservation(
        True, first=first, charged=tuple((key, ends_at) for key, _r, _h, ends_at in counted)
    )


def release(reservation: Reservation) -> None:
    """Give a granted reservation's attempt back (it went well, so it costs nothing).

    Only to the windows it was taken from: once a window has ended there is nothing to give.
    """
    if not reservation.charged:
        return
    with db.engine.begin() as connection:
        for key, ends_at in sorted(reservation.charged):
            connection.execute(
                update(ThrottleCounter)
                .where(
                    ThrottleCounter.key == key,
                    ThrottleCounter.window_ends_at == ends_at,
                    ThrottleCounter.hits > 0,
                )
                .values(hits=ThrottleCounter.hits - 1)
            )


def reserve_sign_in(email: str, address: str | None, device_cookie: str | None) -> Reservation:
    """Reserve a password check for ``email`` (normalised) from ``address``.

    A browser presenting a valid device cookie for this very account is charged in the
    device's own bucket only; anything else in the e-mail's and the address's.
    """
    device = device_of(device_cookie, email)
    if device is not None:
        return reserve((SIGN_IN_PER_DEVICE, f"{_account(email)}:{device}"))
    return reserve((SIGN_IN_PER_EMAIL, email), (SIGN_IN_PER_ADDRESS, address or "unknown"))


def device_cookie_for(email: str, current: str | None) -> str:
    """A signed device cookie naming ``email``'s account (by a hash) and a device id.

    The device keeps its id when ``current`` is already this account's device cookie.
    """
    device = device_of(current, email) or secrets.token_urlsafe(16)
    return _device_serializer().dumps({"account": _account(email), "device": device})


def device_of(cookie: str | None, email: str) -> str | None:
    """The device id of ``cookie`` when it is valid, unexpired and names ``email``'s account."""
    if not cookie:
        return None
    try:
        payload: Any = _device_serializer().loads(
            cookie, max_age=int(DEVICE_COOKIE_LIFETIME.total_seconds())
        )
    except BadData:
        return None
    if not isinstance(payload, dict):
        return None
    account, device = payload.get("account"), payload.get("device")
    if not isinstance(account, str) or not isinstance(device, str) or not device:
        return None
    return device if hmac.compare_digest(account, _account(email)) else None


def _take(connection: Connection, key: str, rule: Rule, now: datetime) -> tuple[int, datetime]:
    hits, ends_at = connection.execute(_upsert(connection.dialect.name, key, rule, now)).one()
    return hits, ends_at


def _sweep(connection: Connection, now: datetime) -> None:
    """Delete counters whose window has ended, so the table holds only live ones.

    Done when a reservation opens a window, in its transaction. Rows another reservation
    holds are skipped (PostgreSQL's SKIP LOCKED; SQLite has one writer at a time anyway):
    waiting for them while holding our own counters could deadlock with a reservation that
    sweeps too. Bounded, so no attempt pays for a long quiet spell all at once.
    """
    ended = (
        select(ThrottleCounter.key)
        .where(ThrottleCounter.window_ends_at <= now)
        .limit(_SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    )
    connection.execute(delete(ThrottleCounter).where(ThrottleCounter.key.in_(ended)))


def _upsert(
    dialect: str, key: str, rule: Rule, now: datetime
) -> ReturningInsert[int, datetime]:
    """One statement: open a window, count in the current one, or start over after it."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(ThrottleCounter).values(
        key=key, scope=rule.scope, hits=1, window_ends_at=now + rule.window
    )
    ended = ThrottleCounter.window_ends_at <= now
    return statement.on_conflict_do_update(
        index_elements=[ThrottleCounter.key],
        set_={
            "hits": case((ended, 1), else_=ThrottleCounter.hits + 1),
            "window_ends_at": case(
                (ended, statement.excluded.window_ends_at), else_=ThrottleCounter.window_ends_at
            ),
        },
    ).returning(ThrottleCounter.hits, ThrottleCounter.window_ends_at)


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def _secret() -> bytes:
    secret = current_app.secret_key
    return secret.encode() if isinstance(secret, str) else bytes(secret or b"")


def forget(rule: Rule, subject: str) -> None:
    """Clear one counter now (an operator lifting a lockout, e.g. with a password reset)."""
    with db.engine.begin() as connection:
        connection.execute(
            delete(ThrottleCounter).where(ThrottleCounter.key == _counter_key(rule, subject))
        )


def _counter_key(rule: Rule, subject: str) -> str:
    # Keyed with a subkey of SECRET_KEY: what is counted never sits in the table in plain.
    if rule.scope.endswith(":address"):
        subject = _network(subject)
    subkey = hmac.new(_secret(), _KEY_LABEL, hashlib.sha256).digest()
    return hmac.new(subkey, f"{rule.scope}\n{subject}".encode(), hashlib.sha256).hexdigest()


def _network(address: str) -> str:
    # An IPv6 client usually holds a whole /64 and could take a new address per attempt;
    # counted by its /64 it cannot. IPv4 addresses (and anything unparsable) count alone.
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _account(email: str) -> str:
    # The account as it is now: its password hash is part of the fingerprint, so a password
    # change or reset voids every device cookie issued before (one kept by someone who once
    # knew the password would otherwise buy them a fresh allowance per cookie).
    user = db.session.scalar(select(User).where(User.email == email))
    password = user.password_hash if user is not None and user.password_hash else ""
    fingerprint = hashlib.sha256(password.encode()).hexdigest()
    return _counter_key(SIGN_IN_PER_DEVICE, f"account:{email}:{fingerprint}")[:32]


def _device_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(), salt=_DEVICE_SALT)
