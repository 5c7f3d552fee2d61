"""Credential checks: which check a connection gets, running it, and what is stored.

The request itself goes through the one door (:mod:`vault.oauth.checks`). A check proves a
stored credential still works without renewing anything:

* GreenInvoice (a key exchange): the exchange itself;
* WhatsApp/Meta: the Graph API's ``/me`` with the token, and its expiry from ``debug_token``;
* Voicenter: its Call Log API over the last minute;
* any other API-key provider with a ``check_url``: that URL, the key sent per ``check_auth``;
* OAuth connections: the userinfo endpoint with the stored access token; an expired token is
  skipped (refreshing it is the refresh engine's business, never a check's).

401/403 mark the connection ``needs_reconnect`` with the provider's (scrubbed) reason, unless
the stored credential changed while it was checked (a reconnect, a pasted key, a refresh:
the result is then skipped and the new one checked next round), or an OAuth connection has
a refresh token: a refused access token does not prove the grant dead, so it is marked
expired and the refresh engine decides. 429,
5xx and timeouts are transient: the status is kept and the check retried with the refresh
back-off. The worker's job, :func:`check_due_credentials`, claims each due connection in
the database with a conditional UPDATE of ``next_check_at``, so workers never check the
same connection twice in a round.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from flask import current_app
from sqlalchemy import CursorResult, or_, select, update

from vault import audit
from vault.crypto import DecryptionError
from vault.extensions import db
from vault.grants import ClientCredentialsGrant, StoredValues, grant_for
from vault.models import Connection, ConnectionStatus, TokenKind, User, utcnow
from vault.oauth import checks
from vault.oauth.errors import GrantRejected, ProviderFailure
from vault.providers.registry import Provider
from vault.redact import redact_known
from vault.refresh.rows import CREDENTIAL_KINDS, ciphertexts, fingerprint, read_tokens
from vault.services.connections import update_reconnect_by
from vault.tokens.store import sanitize_error, token_vault

__all__ = [
    "CheckOutcome",
    "CheckResult",
    "check_connection",
    "check_credentials",
    "check_due_credentials",
    "how_checked",
]

Actor = User | audit.StaffActor | str
_BATCH = 50


class CheckResult(str, enum.Enum):
    """How the last check of a connection ended."""

    OK = "ok"  # the provider accepted the credential
    REJECTED = "rejected"  # 401/403: a person must reconnect or replace the credentials
    FAILED = "failed"  # provider trouble (5xx, 429, timeout) or the vault's own; retried
    SKIPPED = "skipped"  # nothing to check right now (an expired access token, not active)
    UNSUPPORTED = "unsupported"  # this provider offers no way to check


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result, safe to show (``message`` holds no secret)."""

    connection_id: int
    provider: str
    result: CheckResult
    message: str
    vault_error: bool = False  # the vault itself failed (undecryptable value, a bug)

    @property
    def failed(self) -> bool:
        """Whether the credential was refused or could not be checked for provider trouble."""
        return self.result in (CheckResult.REJECTED, CheckResult.FAILED)

    def as_dict(self) -> dict:
        """For ``check-credentials --json``."""
        return {"connection_id": self.connection_id, "provider": self.provider,
                "result": self.result.value, "message": self.message}


@dataclass(frozen=True)
class _Plan:
    """The check a connection gets: a request to run, or why there is none."""

    run: Callable[[], checks.CheckAnswer] | None
    result: CheckResult = CheckResult.OK
    message: str = ""
    secrets: tuple[str, ...] = ()


def how_checked(provider: Provider | None, connection: Connection) -> str | None:
    """In words, how this connection's credential is checked; None when it cannot be."""
    if provider is None:
        return None
    if provider.is_oauth:
        stored = StoredValues.of(connection.tokens)
        grant = grant_for(connection.provider, provider, connection.status, stored, utcnow())
        if isinstance(grant, ClientCredentialsGrant) or not (
            provider.userinfo_url or provider.type == "oidc"
        ):
            return None
        return "a request to its userinfo endpoint with the access token"
    if provider.token_url and provider.fields.keys() >= {"api_key", "api_secret"}:
        return "its key exchange"
    if provider.preset == "whatsapp" and provider.check_url:
        return "the Graph API: the token's identity and expiry"
    if provider.check_url:
        return f"a read-only request to {provider.check_url}"
    return None


def _plan(connection: Connection, provider: Provider | None, now: datetime) -> _Plan:
    """Which request checks ``connection``, decrypting only what it sends."""
    if connection.status != ConnectionStatus.ACTIVE.value:
        return _Plan(None, CheckResult.SKIPPED, f"not checked: the connection is "
                                                f"{connection.status.replace('_', ' ')}")
    if provider is None or how_checked(provider, connection) is None:
        where = "the providers file" if provider is None else (
            "set check_url and check_auth in the providers file" if not provider.is_oauth
            else "it has no userinfo endpoint, or its tokens come from client credentials")
        return _Plan(None, CheckResult.UNSUPPORTED,
                     f"this provider offers no way to check the credential ({where})")
    rows = {token.kind: token for token in connection.tokens}
    if provider.is_oauth:
        access = rows.get(TokenKind.ACCESS.value)
        if access is None or not access.is_valid:
            return _Plan(None, CheckResult.SKIPPED, "no usable access token is stored to check")
        if access.expires_at is not None and access.expires_at <= now:
            return _Plan(None, CheckResult.SKIPPED,
                         "the access token has expired and a check never refreshes it; the "
                         "next refresh shows whether the grant still works")
        token = token_vault.decrypt(access)
        return _Plan(lambda: checks.check_userinfo(provider, token), secrets=(token,))
    key_row = rows.get(TokenKind.API_KEY.value)
    if key_row is None:
        return _Plan(None, CheckResult.SKIPPED, "no API key is stored to check")
    key = token_vault.decrypt(key_row)
    secret_row = rows.get(TokenKind.API_SECRET.value)
    if provider.token_url and secret_row is not None:
        secret = token_vault.decrypt(secret_row)
        return _Plan(lambda: checks.check_key_exchange(provider, key, secret, now),
                     secrets=(key, secret))
    if provider.preset == "whatsapp":
        return _Plan(lambda: checks.check_graph_identity(provider, key), secrets=(key,))
    if provider.preset == "voicenter":
        return _Plan(lambda: checks.check_voicenter(provider, key, now), secrets=(key,))
    return _Plan(lambda: checks.check_url(provider, key), secrets=(key,))


def check_connection(connection: Connection, *, actor: Actor, now: datetime) -> CheckOutcome:
    """Check one connection's credential now and store how it went; the caller commits."""
    provider = current_app.extensions["providers"].get(connection.provider)
    interval = timedelta(hours=current_app.config["VAULT_CHECK_INTERVAL_HOURS"])
    connection_id, provider_key = connection.id, connection.provider
    # What is checked, to tell a refusal of it from a refusal of something stored since.
    checked = ciphertexts({t.kind: t for t in connection.tokens}, CREDENTIAL_KINDS)
    vault_error = False
    try:
        plan = _plan(connection, provider, now)
    except DecryptionError:
        plan = _Plan(None, CheckResult.FAILED, "a stored value cannot be decrypted (see "
                                               "`vault verify`)")
        vault_error = True
    retry_after: float | None = None
    result, message = plan.result, plan.message
    if plan.run is not None:
        secrets = [*plan.secrets, provider.client_secret if provider else None]
        try:
            answer = plan.run()
        except GrantRejected as error:
            result, message = CheckResult.REJECTED, redact_known(str(error), secrets)
        except ProviderFailure as error:
            result, message = CheckResult.FAILED, redact_known(str(error), secrets)
            retry_after = error.retry_after
        except checks.NoCheck as error:
            result, message = CheckResult.UNSUPPORTED, str(error)
        else:
            message = "the provider accepted the credential" + (
                f" ({answer.identity})" if answer.identity else "")
            _learn_expiry(connection, answer)
    message = sanitize_error(message)
    if result is CheckResult.REJECTED:
        result, message = _refused(connection, provider, checked, message, now)
    connection.last_checked_at = now
    connection.check_result = result.value
    connection.check_message = message
    if result is CheckResult.FAILED:
        failures = connection.check_failure_count or 0
        connection.check_failure_count = failures + 1
        connection.next_check_at = now + _backoff(failures, retry_after, interval)
    elif result is CheckResult.SKIPPED and message == _CHANGED:
        connection.next_check_at = now  # check the new credential next round
    else:
        connection.check_failure_count = 0
        connection.next_check_at = now + interval
    if result in (CheckResult.OK, CheckResult.REJECTED):
        update_reconnect_by(connection, provider, now)
    if actor != "system" or result in (CheckResult.REJECTED, CheckResult.FAILED):
        audit.record(
            "connection.checked", target=provider_key, connection=connection, actor=actor,
            outcome="failure" if result in (CheckResult.REJECTED, CheckResult.FAILED)
            else "success",
            detail=f"{result.value}: {message}",
        )
    return CheckOutcome(connection_id, provider_key, result, message, vault_error)


_CHANGED = "the credential changed while it was checked; the new one is checked next"
_REFRESH_SCHEDULED = "access token refused; refresh scheduled"


def _refused(
    connection: Connection, provider: Provider | None, checked: dict[str, bytes],
    message: str, now: datetime,
) -> tuple[CheckResult, str]:
    """What a 401/403 on ``checked`` means for what is stored now; the caller commits.

    Decided under the connection's write lock, taken first by an UPDATE of its row
    (PostgreSQL's row lock, SQLite's file lock): a reconnect or a pasted key committing
    meanwhile is then either already visible here or waits for this transaction.
    """
    db.session.execute(
        update(Connection).where(Connection.id == connection.id).values(last_checked_at=now)
    )
    if fingerprint(connection.id, CREDENTIAL_KINDS) != checked:
        return CheckResult.SKIPPED, _CHANGED
    tokens = read_tokens(connection)  # fresh: is_valid may have changed meanwhile
    refresh = tokens.get(TokenKind.REFRESH.value)
    access = tokens.get(TokenKind.ACCESS.value)
    if provider is not None and provider.is_oauth and access is not None and (
        refresh is not None and refresh.is_valid
    ):
        # userinfo judged only the access token (revoked, or rotated out early); whether
        # the grant lives is the refresh engine's call: an expired token is due for it now.
        access.expires_at = now
        return CheckResult.SKIPPED, _REFRESH_SCHEDULED
    token_vault.mark_invalid(connection, f"credential check: {message}")
    return CheckResult.REJECTED, message


def _learn_expiry(connection: Connection, answer: checks.CheckAnswer) -> None:
    """A pasted key's expiry, when the provider told it (Meta's debug_token)."""
    if answer.expires_at is None:
        return
    row = next((t for t in connection.tokens if t.kind == TokenKind.API_KEY.value), None)
    if row is not None and row.expires_at != answer.expires_at:
        row.expires_at = answer.expires_at


def _backoff(failures: int, retry_after: float | None, interval: timedelta) -> timedelta:
    """The refresh back-off (base · 2^failures up to the cap), never sooner than
    Retry-After, never later than the regular interval."""
    config = current_app.config
    cap = config["VAULT_REFRESH_BACKOFF_CAP_SECONDS"]
    delay = min(cap, config["VAULT_REFRESH_BACKOFF_BASE_SECONDS"] * 2 ** min(failures, 30))
    if retry_after is not None:
        delay = min(cap, max(delay, retry_after))
    return min(timedelta(seconds=delay), interval)


def check_credentials(
    provider_key: str | None = None, *, actor: Actor = "cli", now: datetime | None = None
) -> list[CheckOutcome]:
    """Check every active connection (of one provider) now, one commit each; for the CLI."""
    statement = select(Connection.id).where(
        Connection.status == ConnectionStatus.ACTIVE.value
    ).order_by(Connection.id)
    if provider_key is not None:
        statement = statement.where(Connection.provider == provider_key)
    outcomes = []
    for connection_id in db.session.scalars(statement).all():
        connection = db.session.get(Connection, connection_id)
        if connection is None:
            continue
        outcomes.append(check_connection(connection, actor=actor, now=now or utcnow()))
        db.session.commit()
    return outcomes


def check_due_credentials(now: datetime) -> bool:
    """The worker's job: check each active connection whose next check is due.

    Each connection is claimed first by a conditional UPDATE that moves its
    ``next_check_at`` past ``now`` (a lease as long as a check can take), committed before
    the provider is asked: another worker's claim then matches no row. True when every
    check ran without a failure of the vault itself (a provider refusing or failing is a
    result, not a failure of the job).
    """
    lease = timedelta(seconds=current_app.config["VAULT_PROVIDER_TIMEOUT_SECONDS"] * 3 + 60)
    due = or_(Connection.next_check_at.is_(None), Connection.next_check_at <= now)
    active = Connection.status == ConnectionStatus.ACTIVE.value
    all_ran = True
    while True:
        ids = db.session.scalars(
            select(Connection.id).where(active, due)
            .order_by(Connection.next_check_at.asc().nulls_first(), Connection.id)
            .limit(_BATCH)
        ).all()
        db.session.commit()
        if not ids:
            return all_ran
        for connection_id in ids:
            claim = update(Connection).where(Connection.id == connection_id, active, due)
            claimed = cast(CursorResult, db.session.execute(
                claim.values(next_check_at=now + lease)
            )).rowcount
            db.session.commit()
            if claimed != 1:
                continue  # another worker has it
            try:
                connection = db.session.get(Connection, connection_id)
                assert connection is not None
                outcome = check_connection(connection, actor="system", now=now)
                db.session.commit()
            except Exception:  # noqa: BLE001 - one broken connection must not stop the round
                db.session.rollback()
                current_app.logger.exception("credential check of connection %s failed",
                                             connection_id)
                all_ran = False
                continue
            all_ran = all_ran and not outcome.vault_error

