"""Device authorization grants (RFC 8628): Connect's code, polling on the server, the outcome.

**Start.** :func:`start_device_grant` asks the provider for a device code and keeps the grant
in ``device_grants``: the device code, user code and complete verification URL encrypted
through :data:`~vault.tokens.store.token_vault`'s cipher (AAD ``device-grant:<id>``), never
in a page, URL, log, audit row or the session (the page shows the user code only).

**Who polls.** The server, never the browser: the grant's page asks
``POST /device-grants/<id>/poll`` every few seconds while it is open, and every worker cycle
polls every due grant (the ``device-grants`` job), so a closed tab still completes. Both call
:func:`advance_device_grant`, which first **claims** the grant with a conditional UPDATE
(``next_poll_at <= now``, moved past the provider timeout), so no two instances poll one grant
at the same moment, and then sets ``next_poll_at`` to the answer's time plus the interval, so
none polls faster than the provider allows; ``slow_down`` adds 5 seconds to the interval.

**Transactions.** Like the refresh engine, :func:`advance_device_grant` commits by design:
its claim in a short transaction of its own, no transaction open during the provider call,
then the outcome (tokens through ``record_grant``, the grant's status, the audit row) in one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from flask import current_app
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError

from vault import audit
from vault.extensions import db
from vault.models import DeviceGrant, DeviceGrantStatus, User, utcnow
from vault.oauth import device, identity
from vault.oauth.clients import connect_client
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.tokens import provider_timeout
from vault.providers.registry import Provider
from vault.redact import redact_known
from vault.services.connections import ConnectError, account_from_claims, record_grant
from vault.tokens.store import DecryptionError, token_vault

PENDING = DeviceGrantStatus.PENDING.value
# Ended grants stay this long after their code's expiry (their page still says how they
# ended), then are deleted.
KEEP_ENDED = timedelta(days=1)
# At most this many grants are polled per worker cycle (each poll is one provider request).
WORKER_BATCH = 50


@dataclass(frozen=True)
class DeviceCodes:
    """What the grant's page shows: the user code and the URL that carries it (QR code)."""

    user_code: str = field(repr=False)
    verification_uri_complete: str | None = field(repr=False)


def start_device_grant(provider: Provider, user: User, *, now: datetime | None = None
                       ) -> DeviceGrant:
    """Ask ``provider`` for a device code and keep the pending grant (added, not committed).

    Raises :class:`ConnectError` (a message safe to show) when the provider refuses or cannot
    be reached; nothing is added then.
    """
    now = now or utcnow()
    try:
        code = device.request_code(provider)
    except (GrantRejected, ProviderFailure) as error:
        said = redact_known(str(error), [provider.client_secret or ""])
        raise ConnectError(f"{provider.title} gave no device code: {said}.") from None
    grant = DeviceGrant(
        provider=provider.key,
        verification_uri=code.verification_uri,
        interval_seconds=code.interval,
        expires_at=now + timedelta(seconds=code.expires_in),
        next_poll_at=now + timedelta(seconds=code.interval),
        polls=0,
        created_by_id=user.id,
        created_at=now,
    )
    db.session.add(grant)
    db.session.flush()
    secret = json.dumps({
        "device_code": code.device_code,
        "user_code": code.user_code,
        "verification_uri_complete": code.verification_uri_complete,
    })
    grant.ciphertext = token_vault.cipher.encrypt(secret, aad=grant.aad())
    grant.key_id = token_vault.cipher.current_key_id
    audit.record(
        "device_grant.started", target=provider.key, actor=user,
        detail=f"device grant #{grant.id}; the code is valid for {code.expires_in} s, "
        f"polled every {code.interval} s",
    )
    return grant


def device_codes(grant: DeviceGrant) -> DeviceCodes | None:
    """The user code and complete URL of a pending grant (None once it ended)."""
    values = _secret(grant)
    if values is None:
        return None
    return DeviceCodes(values["user_code"], values.get("verification_uri_complete"))


def _secret(grant: DeviceGrant) -> dict | None:
    if grant.ciphertext is None:
        return None
    return json.loads(token_vault.cipher.decrypt(grant.ciphertext, aad=grant.aad()))


def advance_device_grant(grant_id: int, *, now: datetime | None = None) -> str | None:
    """Poll the provider once for a pending grant if its poll is due, and act on the answer.

    Returns the grant's status afterwards (None: no such grant). A grant not due, claimed by
    another instance, or ended is left as it is. Commits (see the module docstring).
    """
    now = now or utcnow()
    providers = current_app.extensions["providers"]
    grant = db.session.get(DeviceGrant, grant_id, populate_existing=True)
    if grant is None or grant.status != PENDING:
        db.session.commit()
        return grant.status if grant is not None else None
    provider = providers.get(grant.provider)
    if provider is None or not provider.uses_device_flow:
        return _end(grant, DeviceGrantStatus.FAILED, now,
                    "its provider is no longer in the providers file with flow = \"device\"")
    if grant.expires_at <= now:
        return _end(grant, DeviceGrantStatus.EXPIRED, now,
                    "the code expired before anyone approved it")
    if not _claim(grant, now):
        db.session.commit()
        return PENDING
    try:
        secret = _secret(grant)
    except DecryptionError:
        return _end(grant, DeviceGrantStatus.FAILED, utcnow(),
                    "the pending grant could not be decrypted (wrong ENCRYPTION_SECRET?)")
    db.session.commit()  # no transaction stays open across the provider call
    device_code = secret["device_code"] if secret else ""
    try:
        polled = device.poll(provider, device_code)
    except GrantRejected as error:
        return _end(grant, DeviceGrantStatus.FAILED, utcnow(),
                    f"{provider.title} refused the grant: "
                    f"{redact_known(str(error), [device_code, provider.client_secret or ''])}")
    except ProviderFailure as error:
        current_app.logger.warning("device grant %s: %s: poll failed: %s",
                                   grant.id, provider.key, error)
        wait = max(grant.interval_seconds, int(error.retry_after or 0))
        return _next_poll(grant, utcnow(), wait, f"{provider.title} could not be asked just "
                          "now; the vault tries again.")
    answered = utcnow()
    if polled.outcome is device.PollOutcome.PENDING:
        return _next_poll(grant, answered, grant.interval_seconds, None)
    if polled.outcome is device.PollOutcome.SLOW_DOWN:
        slower = min(grant.interval_seconds + device.SLOW_DOWN_SECONDS, device.MAX_INTERVAL)
        return _next_poll(grant, answered, slower, f"{provider.title} asked the vault to ask "
                          f"less often (slow_down); it now asks every {slower} s.")
    if polled.outcome is device.PollOutcome.DENIED:
        return _end(grant, DeviceGrantStatus.DENIED, answered,
                    "the person at the provider denied access (access_denied)")
    if polled.outcome is device.PollOutcome.EXPIRED:
        return _end(grant, DeviceGrantStatus.EXPIRED, answered,
                    "the code expired before anyone approved it (expired_token)")
    return _approve(grant, provider, polled.token or {}, answered)


def _claim(grant: DeviceGrant, now: datetime) -> bool:
    """Take this grant's next poll: only one caller's UPDATE matches, on any instance.

    ``next_poll_at`` moves past the longest the provider call can take, so another instance
    cannot claim it while this one waits for the answer; a crashed poller's claim lapses.
    """
    lease = timedelta(seconds=grant.interval_seconds + provider_timeout() + 5)
    result = cast(CursorResult, db.session.execute(
        update(DeviceGrant)
        .where(DeviceGrant.id == grant.id, DeviceGrant.status == PENDING,
               DeviceGrant.next_poll_at <= now)
        .values(next_poll_at=now + lease, last_polled_at=now, polls=DeviceGrant.polls + 1)
        .execution_options(synchronize_session=False)
    ))
    if result.rowcount != 1:
        return False
    db.session.commit()
    db.session.refresh(grant)
    return True


def _next_poll(grant: DeviceGrant, at: datetime, interval: int, note: str | None) -> str:
    db.session.execute(
        update(DeviceGrant).where(DeviceGrant.id == grant.id, DeviceGrant.status == PENDING)
        .values(interval_seconds=interval, next_poll_at=at + timedelta(seconds=interval),
                message=note)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return PENDING


def _approve(grant: DeviceGrant, provider: Provider, token: dict, now: datetime) -> str:
    """The person approved: the identity step, then the usual ``record_grant``."""
    user = db.session.get(User, grant.created_by_id) if grant.created_by_id else None
    try:
        claims = identity.identity_of_token_answer(connect_client(provider), token)
        account = account_from_claims(claims)
    except (identity.IdentityError, ConnectError) as error:
        return _end(grant, DeviceGrantStatus.FAILED, now, f"{error} Nothing was stored.")
    try:
        connection, created = record_grant(provider, token, account, user,
                                           actor=None if user else "system")
        grant.connection_id = connection.id
        _ended(grant, DeviceGrantStatus.APPROVED, now, None)
        audit.record(
            "device_grant.approved", target=f"{provider.key}:{account.email or account.subject}",
            connection=connection, actor=user or "system",
            detail=f"device grant #{grant.id}: {'connected' if created else 'reconnected'}",
        )
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        grant = db.session.get(DeviceGrant, grant.id) or grant
        return _end(grant, DeviceGrantStatus.FAILED, now, "another connect of the same account "
                    "finished at the same moment; nothing was stored")
    return DeviceGrantStatus.APPROVED.value


def _end(grant: DeviceGrant, status: DeviceGrantStatus, now: datetime, why: str) -> str:
    """End a pending grant (its codes are deleted), audited; commits."""
    user = db.session.get(User, grant.created_by_id) if grant.created_by_id else None
    if _ended(grant, status, now, why):
        audit.record(
            f"device_grant.{status.value}", target=grant.provider, actor=user or "system",
            outcome="failure", detail=f"device grant #{grant.id}: {why}",
        )
    db.session.commit()
    return grant.status


def _ended(grant: DeviceGrant, status: DeviceGrantStatus, now: datetime, why: str | None
           ) -> bool:
    """Mark the grant ended, its codes deleted, unless another instance ended it first."""
    result = cast(CursorResult, db.session.execute(
        update(DeviceGrant).where(DeviceGrant.id == grant.id, DeviceGrant.status == PENDING)
        .values(status=status.value, finished_at=now, ciphertext=None, key_id=None, message=why)
        .execution_options(synchronize_session=False)
    ))
    db.session.refresh(grant)
    return result.rowcount == 1


def advance_due_device_grants(
    now: datetime, *, stop: Callable[[], bool] = lambda: False
) -> tuple[int, int]:
    """The worker's job: poll every due pending grant (each claimed), then prune ended ones.

    Returns (grants polled or ended, grants pruned).
    """
    due = db.session.scalars(
        select(DeviceGrant.id).where(DeviceGrant.status == PENDING,
                                     DeviceGrant.next_poll_at <= now)
        .order_by(DeviceGrant.next_poll_at).limit(WORKER_BATCH)
    ).all()
    db.session.commit()
    for grant_id in due:
        if stop():
            break
        advance_device_grant(grant_id)
    return len(due), prune_device_grants(now)


def prune_device_grants(now: datetime) -> int:
    """Delete grants whose code expired more than a day ago (committed); how many."""
    result = cast(CursorResult, db.session.execute(
        delete(DeviceGrant).where(DeviceGrant.expires_at <= now - KEEP_ENDED)
    ))
    db.session.commit()
    return result.rowcount
