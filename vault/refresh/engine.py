"""The refresh protocol (docs/architecture.md, "Refresh protocol"): one provider call per
due token, everywhere.

1. Single flight in the process (a lock per connection id), then a lock on the connection in
   the database: PostgreSQL ``SELECT ... FOR NO KEY UPDATE`` with a lock timeout, held by the
   transaction; SQLite a lease claimed in a short transaction of its own, so that no write
   transaction stays open across the provider call (:mod:`vault.refresh.rows`).
2. Under the lock the tokens are read again: when another worker or process refreshed them
   meanwhile, its result is used and the provider is not asked.
3. The provider's answer is stored in one transaction (access token, rotated refresh token)
   and committed before anyone is handed the new access token.
4. A refused grant marks the connection ``needs_reconnect``; a provider that is down, slow or
   rate-limiting keeps the tokens, records a sanitised error and backs off exponentially.
5. A lock timeout is not a credential failure: the caller is told the token is unavailable.

:func:`refresh_now` (manual refresh) and :func:`refresh_due` (cron and the dashboard's batch
button, in :mod:`vault.refresh.batch`) use the same engine.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Flask, current_app
from sqlalchemy.exc import OperationalError

from vault import audit
from vault.extensions import db
from vault.grants import Credentials, NotRefreshable, StoredValues, grant_for
from vault.grants.limits import apply_reconnect_deadline
from vault.models import Connection, ConnectionStatus, Token, TokenKind, User
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.oauth.tokens import NewTokens
from vault.observability import metrics
from vault.redact import redact_known
from vault.refresh import rows
from vault.tokens.store import NeedsReconnect, TokenUnavailable, sanitize_error, token_vault

__all__ = [
    "Outcome",
    "ProviderUnavailable",
    "RefreshEngine",
    "RefreshResult",
    "refresh_now",
    "register_refresh",
]

_CREDENTIAL_FIELDS = {
    "refresh_token": TokenKind.REFRESH,
    "api_key": TokenKind.API_KEY,
    "api_secret": TokenKind.API_SECRET,
    "private_key": TokenKind.PRIVATE_KEY,
}

Actor = User | audit.StaffActor | str


class ProviderUnavailable(TokenUnavailable):
    """The provider cannot be used right now; the tokens are kept and a retry is scheduled."""

    def __init__(self, message: str, retry_at: datetime | None = None):
        super().__init__(message)
        self.retry_at = retry_at


class Outcome(str, enum.Enum):
    """How one refresh attempt ended."""

    REFRESHED = "refreshed"  # the provider answered; new tokens are stored
    ALREADY_FRESH = "already_fresh"  # another worker refreshed meanwhile; its result is used
    SKIPPED = "skipped"  # another thread of this process is refreshing it right now
    FAILED = "failed"  # provider unavailable (or backing off); tokens kept
    NEEDS_RECONNECT = "needs_reconnect"  # the grant is gone
    UNAVAILABLE = "unavailable"  # nothing to refresh with, disconnected, or lock timeout


@dataclass(frozen=True)
class RefreshResult:
    """The outcome of one refresh attempt, safe to show (``message`` holds no secret)."""

    connection_id: int
    outcome: Outcome
    message: str = ""
    retry_at: datetime | None = None
    usable: bool = False  # whether a valid, unexpired access token is stored afterwards

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.REFRESHED, Outcome.ALREADY_FRESH, Outcome.SKIPPED)


class RefreshEngine:
    """The :class:`~vault.tokens.store.Refresher` of one app: the protocol for a connection."""

    def __init__(self) -> None:
        # connection id -> [lock, number of threads using it]; entries go when unused.
        self._flights: dict[int, list] = {}
        self._flights_guard = threading.Lock()

    def refresh(self, connection: Connection) -> None:
        """Refresher protocol, called by ``get_access_token`` for a token that is due.

        Returns quietly when a usable token is stored afterwards (even if the provider could
        not be reached, an unexpired token is still worth handing out); raises
        :class:`NeedsReconnect` or :class:`ProviderUnavailable`/:class:`TokenUnavailable`.
        """
        result = self.run(
            connection.id, window=current_app.config["VAULT_REFRESH_BUFFER_SECONDS"]
        )
        if result.usable:
            return
        if result.outcome is Outcome.NEEDS_RECONNECT:
            raise NeedsReconnect(result.message)
        if result.outcome is Outcome.FAILED:
            raise ProviderUnavailable(result.message, retry_at=result.retry_at)
        if not result.ok:
            raise TokenUnavailable(result.message)

    def run(
        self,
        connection_id: int,
        *,
        force: bool = False,
        window: timedelta | int = 0,
        actor: Actor = "system",
        claimed: bool = False,
    ) -> RefreshResult:
        """Run the protocol for one connection and commit; never raises for provider trouble.

        ``force`` refreshes even a fresh token and ignores back-off (manual refresh).
        ``window``: a token valid beyond it is left alone. ``claimed``: the caller's
        transaction already holds the row lock (batch refresh), so a busy single flight here
        means another thread has it in hand and this call skips instead of waiting.
        """
        if not isinstance(window, timedelta):
            window = timedelta(seconds=window)
        before = None if claimed else rows.fingerprint(connection_id)
        with self._single_flight(connection_id, wait=not claimed) as acquired:
            if not acquired:
                return RefreshResult(connection_id, Outcome.SKIPPED, "being refreshed already")
            try:
                if claimed and not rows.uses_leases():
                    # Loaded and row-locked by the caller's claim, in this transaction.
                    connection = db.session.get(Connection, connection_id)
                else:
                    # SQLite's batch claims take the lease here, without waiting for it.
                    connection = rows.lock_row(
                        connection_id, timeout=0 if claimed else _lock_timeout()
                    )
            except rows.LockTimeout:
                db.session.rollback()
                if claimed:
                    return RefreshResult(connection_id, Outcome.SKIPPED, "being refreshed already")
                usable = rows.usable(rows.access_token(connection_id))
                message = "another refresh of this connection is still running"
                return RefreshResult(connection_id, Outcome.UNAVAILABLE, message, usable=usable)
            if connection is None:
                db.session.rollback()
                return RefreshResult(connection_id, Outcome.UNAVAILABLE, "no such connection")
            try:
                return self._refresh_locked(connection, before, force, window, actor)
            except BaseException:
                db.session.rollback()
                rows.abandon(connection_id)
                raise

    @contextmanager
    def _single_flight(self, connection_id: int, *, wait: bool) -> Iterator[bool]:
        with self._flights_guard:
            flight = self._flights.setdefault(connection_id, [threading.Lock(), 0])
            flight[1] += 1
        acquired = flight[0].acquire(blocking=wait)
        try:
            yield acquired
        finally:
            if acquired:
                flight[0].release()
            with self._flights_guard:
                flight[1] -= 1
                if flight[1] == 0:
                    del self._flights[connection_id]

    def _refresh_locked(
        self,
        connection: Connection,
        before: dict[str, bytes] | None,
        force: bool,
        window: timedelta,
        actor: Actor,
    ) -> RefreshResult:
        now = token_vault.clock()
        connection_id = connection.id  # read now: the commit below expires the instance
        tokens = rows.read_tokens(connection)
        access = tokens.get(TokenKind.ACCESS.value)
        usable = rows.usable(access, now)

        def finish(outcome: Outcome, message: str = "", retry_at=None) -> RefreshResult:
            rows.release(connection_id)
            db.session.commit()  # releases the row lock or the lease
            return RefreshResult(connection_id, outcome, message, retry_at, usable)

        if connection.status == ConnectionStatus.NEEDS_RECONNECT.value:
            return finish(Outcome.NEEDS_RECONNECT, connection.last_error or "reconnect needed")
        fresh = access is not None and usable and (
            access.expires_at is None or access.expires_at > now + window
        )
        if fresh and not force:
            return finish(Outcome.ALREADY_FRESH)
        if before is not None and usable and rows.ciphertexts(tokens) != before:
            return finish(Outcome.ALREADY_FRESH, "refreshed meanwhile by another worker")
        provider = current_app.extensions["providers"].get(connection.provider)
        grant = grant_for(
            connection.provider, provider, connection.status, StoredValues.of(tokens.values()), now
        )
        if not grant.renewable:
            # What the vault already knows is not worth a provider call to learn again.
            outcome = Outcome.NEEDS_RECONNECT if grant.needs_person else Outcome.UNAVAILABLE
            return finish(outcome, grant.reason or "nothing can renew this connection")
        if not force and connection.next_refresh_at and connection.next_refresh_at > now:
            message = f"backing off after failures: {connection.last_error or 'provider error'}"
            return finish(Outcome.FAILED, message, connection.next_refresh_at)

        assert provider is not None  # a renewable grant has a configured provider
        credentials = Credentials(
            **{
                field: token_vault.decrypt(tokens[kind.value])
                for field, kind in _CREDENTIAL_FIELDS.items()
                if kind.value in tokens
            },
            scope=connection.scopes_requested,  # a service account asks for these
        )
        used = rows.ciphertexts(tokens)
        secrets = [getattr(credentials, name) or "" for name in _CREDENTIAL_FIELDS]
        secrets += [provider.client_secret or ""]
        answer: NewTokens | None = None
        failure: GrantRejected | ProviderFailure | None = None
        # On SQLite only the lease is held here: this session has no write transaction open.
        try:
            with metrics.refresh_attempt(  # times and counts the provider call
                connection.provider, needs_reconnect=GrantRejected, transient=ProviderFailure
            ):
                answer = grant.request(provider, credentials, now=now)
        except NotRefreshable as error:
            return finish(Outcome.UNAVAILABLE, str(error))
        except (GrantRejected, ProviderFailure) as error:
            failure = error
        # The answer is in hand (a rotated refresh token may exist nowhere else): on SQLite
        # another writer may hold the file's write lock past busy_timeout right now, so the
        # storing transaction is tried again until the lock timeout has passed once more.
        deadline = time.monotonic() + _lock_timeout()
        while True:
            try:
                return self._settle(
                    connection, tokens, used, answer, failure, secrets, actor, now, usable
                )
            except OperationalError as error:
                db.session.rollback()  # the claim stays in session.info until a commit
                if not rows.is_busy(error):
                    raise
                if time.monotonic() >= deadline:
                    break
                time.sleep(rows.LEASE_POLL_SECONDS)
        # Loud, for the operator: a provider that rotates refresh tokens may have retired
        # the stored one. No token or reason text: only which connection.
        current_app.logger.error(
            "refresh of connection %s: the provider answered but the database stayed locked;"
            " its answer was not stored (a rotated refresh token may be lost)",
            connection_id,
        )
        rows.abandon(connection_id)
        return RefreshResult(
            connection_id, Outcome.FAILED,
            "the database stayed locked; the provider's answer could not be stored",
            usable=usable,
        )

    def _settle(
        self,
        connection: Connection,
        tokens: dict[str, Token],
        used: dict[str, bytes],
        answer: NewTokens | None,
        failure: GrantRejected | ProviderFailure | None,
        secrets: list[str],
        actor: Actor,
        now: datetime,
        usable: bool,
    ) -> RefreshResult:
        """Store the provider's answer (or failure) and commit, in one transaction.

        Raises OperationalError when SQLite's write lock is busy; the caller may retry.
        """
        connection_id = connection.id

        def finish(outcome: Outcome, message: str = "") -> RefreshResult:
            rows.release(connection_id)
            db.session.commit()
            return RefreshResult(connection_id, outcome, message, None, usable)

        if not rows.may_store(connection_id, used):
            # SQLite only: this call outlived its lease, and another refresh stored first.
            current_app.logger.warning(
                "refresh of connection %s outlived its lease; kept the other refresh's tokens",
                connection_id,
            )
            return finish(Outcome.ALREADY_FRESH, "refreshed meanwhile by another worker")
        if isinstance(failure, GrantRejected):
            if rows.ciphertexts(rows.read_tokens(connection)) != used:
                return finish(Outcome.ALREADY_FRESH, "the grant was replaced meanwhile")
            return self._rejected(connection, redact_known(str(failure), secrets), actor)
        if isinstance(failure, ProviderFailure):
            reason = redact_known(str(failure), secrets)
            return self._failed(connection, failure, reason, actor, usable)
        assert answer is not None
        return self._store(connection, tokens, answer, actor, now)

    def _store(
        self,
        connection: Connection,
        tokens: dict[str, Token],
        answer: NewTokens,
        actor: Actor,
        now: datetime,
    ) -> RefreshResult:
        # The rows were read under the row lock in this transaction: no SELECT before each
        # write, and nothing is flushed until the commit, which sends it all at once.
        connection_id = connection.id
        stored = dict(tokens)
        stored[TokenKind.ACCESS.value] = token_vault.store(
            connection,
            TokenKind.ACCESS,
            answer.access_token,
            expires_at=answer.expires_at,
            existing=tokens.get(TokenKind.ACCESS.value),
            flush=False,
        )
        refresh_token = tokens.get(TokenKind.REFRESH.value)
        if answer.refresh_token:
            stored[TokenKind.REFRESH.value] = token_vault.store(
                connection,
                TokenKind.REFRESH,
                answer.refresh_token,
                expires_at=answer.refresh_token_expires_at,
                existing=refresh_token,
                flush=False,
            )
        elif answer.refresh_token_expires_at and refresh_token is not None:
            refresh_token.expires_at = answer.refresh_token_expires_at
        if answer.id_token:
            token_vault.store(connection, TokenKind.ID, answer.id_token)
        if answer.scope:
            connection.scopes_granted = answer.scope
        connection.status = ConnectionStatus.ACTIVE.value
        connection.last_error = None
        connection.failure_count = 0
        connection.last_refreshed_at = now
        connection.next_refresh_at = None
        # An idle-days rule counts from this refresh: the reconnect-by date moves with it.
        provider = current_app.extensions["providers"].get(connection.provider)
        apply_reconnect_deadline(connection, provider, stored.values(), now)
        detail = "refresh token rotated" if answer.refresh_token else None
        if answer.expires_at is None:
            detail = ", ".join(filter(None, [detail, "expiry unknown"]))
        audit.record(
            "token.refreshed",
            target=connection.provider,
            connection=connection,
            actor=actor,
            detail=detail,
        )
        db.session.commit()
        return RefreshResult(connection_id, Outcome.REFRESHED, usable=True)

    def _rejected(self, connection: Connection, reason: str, actor: Actor) -> RefreshResult:
        connection_id = connection.id
        token_vault.mark_invalid(connection, reason)
        provider = current_app.extensions["providers"].get(connection.provider)
        apply_reconnect_deadline(connection, provider, [], token_vault.clock())
        _record_failure(connection, actor, f"needs reconnect: {reason}")
        return RefreshResult(connection_id, Outcome.NEEDS_RECONNECT, reason)

    def _failed(
        self,
        connection: Connection,
        error: ProviderFailure,
        reason: str,
        actor: Actor,
        usable: bool,
    ) -> RefreshResult:
        connection_id = connection.id
        failures = connection.failure_count or 0
        config = current_app.config
        base = config["VAULT_REFRESH_BACKOFF_BASE_SECONDS"]
        cap = config["VAULT_REFRESH_BACKOFF_CAP_SECONDS"]
        delay = min(cap, base * 2**failures)
        if error.retry_after is not None:
            # The provider's hint, but never beyond the operator's cap (nor a date overflow).
            delay = min(cap, max(delay, error.retry_after))
        retry_at = token_vault.clock() + timedelta(seconds=delay)
        connection.failure_count = failures + 1
        connection.last_error = sanitize_error(reason)
        connection.next_refresh_at = retry_at
        retry = retry_at.isoformat(timespec="seconds")
        _record_failure(connection, actor, f"{reason}; failure {failures + 1}, retry after {retry}")
        return RefreshResult(connection_id, Outcome.FAILED, reason, retry_at, usable)


def _record_failure(connection: Connection, actor: Actor, detail: str) -> None:
    """Audit and log a failed refresh, and commit what the caller changed with it."""
    connection_id = connection.id  # the commit expires the instance
    audit.record(
        "token.refresh_failed",
        target=connection.provider,
        connection=connection,
        actor=actor,
        outcome="failure",
        detail=detail,
    )
    db.session.commit()
    current_app.logger.warning("refresh of connection %s failed: %s", connection_id, detail)


def register_refresh(app: Flask) -> None:
    """Plug a refresh engine into the app's token vault."""
    engine = RefreshEngine()
    app.extensions["refresh_engine"] = engine
    token_vault.set_refresher(engine, app)


def refresh_now(connection: Connection, actor: Actor) -> RefreshResult:
    """Refresh ``connection`` now, even when its token is fresh (the dashboard's button)."""
    engine: RefreshEngine = current_app.extensions["refresh_engine"]
    return engine.run(connection.id, force=True, actor=actor)


def _lock_timeout() -> float:
    # Long enough to outlast the lock holder's provider call (config.py's default).
    return float(current_app.config["VAULT_REFRESH_LOCK_TIMEOUT_SECONDS"])


