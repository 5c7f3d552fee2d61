"""Reconnect and connect links: one OAuth flow for someone without a vault account.

A *reconnect link* lets the owner of a connection that needs reconnecting sign in at the
provider again; the answer counts only for the very same account (``sub``). A *connect link*
lets a person connect a new account of a provider; it counts only when the account's verified
e-mail is the one the admin named. Either is a bearer secret in a URL
(``<VAULT_BASE_URL>/reconnect/<token>``), so: 256 random bits, only its SHA-256 hash stored
(as service keys are, :func:`~vault.services.service_keys.hash_key`), usable once (consumed by
a conditional UPDATE in the transaction that stores the tokens), expiring after
``VAULT_RECONNECT_LINK_HOURS``, revocable, and audited without the token. A reconnect link
dies when its connection is reconnected by other means or disconnected
(:func:`~vault.services.connections.void_reconnect_links`).

Services never commit: the caller's transaction saves the link with whatever caused it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app, has_request_context, request
from sqlalchemy import exists, select, update

from vault import audit
from vault.extensions import db
from vault.models import AccessLink, Connection, ConnectionStatus, LinkKind, User
from vault.providers.registry import Provider
from vault.services.accounts import AccountError, checked_email
from vault.services.connections import LINK_VOIDED_BY, Account, record_grant
from vault.services.service_keys import hash_key

# Where links point; the blueprint in vault/web/reconnect.py serves this path.
LINK_PATH = "/reconnect/"
# The audit actor of links that alerts create (no person asked for them).
ALERTS_ACTOR = "alerts"
# Connections a reconnect link is for: broken ones. An active one needs none (a link made
# earlier is then void: reconnected meanwhile); a disconnected one was switched off on purpose.
RECONNECTABLE = (ConnectionStatus.NEEDS_RECONNECT.value, ConnectionStatus.ERROR.value)
# What secrets.token_urlsafe(32) produces; anything else is not looked up at all.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


class LinkError(Exception):
    """A link cannot be made, opened or used; the message is safe to show, ``status`` fits it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LinkView:
    """What a link's page may show: the provider and the account, the e-mail masked."""

    id: int
    kind: str
    provider: str
    account: str


def link_actor(link_id: int) -> str:
    """The audit actor for what is done through link ``link_id`` (by someone without an account)."""
    return f"link:{link_id}"


def issue_reconnect_link(connection: Connection, *, created_by: str | None, now: datetime) -> str:
    """A new reconnect link for ``connection``; returns its absolute URL (shown once).

    ``created_by`` is the admin's e-mail, or None for links made by alerts (actor
    ``alerts``). Added to the current session, audited, not committed. Raises
    :class:`LinkError` when the connection cannot be reconnected by a browser flow (its
    provider left the providers file, or has none) or is active.
    """
    provider = _browser_provider(connection.provider)
    if provider is None:
        raise LinkError(f"{connection.provider} connections cannot be reconnected with a link.")
    if connection.status not in RECONNECTABLE:
        raise LinkError(f"This connection is {connection.status.replace('_', ' ')}; only one "
                        "that needs reconnecting gets a reconnect link.", 409)
    base = _base_url()
    link, token = _new_link(LinkKind.RECONNECT, provider.key, created_by, now)
    link.connection_id = connection.id
    db.session.flush()
    _record(link, "created", actor=link.created_by, connection=connection)
    return base + LINK_PATH + token


def can_issue(connection: Connection) -> bool:
    """Whether a reconnect link can be made for ``connection`` now (the page's button)."""
    return (
        connection.status in RECONNECTABLE
        and _browser_provider(connection.provider) is not None
    )


def issue_connect_link(
    provider_key: str, expected_email: str, *, created_by: str, now: datetime
) -> str:
    """A new connect link for an account of ``provider_key`` whose e-mail is ``expected_email``.

    Returns the absolute URL (shown once); audited, not committed. Raises :class:`LinkError`
    for a provider without a browser flow or an e-mail address that is not one.
    """
    provider = _browser_provider(provider_key)
    if provider is None:
        raise LinkError("This provider cannot be connected with a link.")
    try:
        email = checked_email(expected_email)
    except AccountError as error:
        raise LinkError(str(error)) from None
    base = _base_url()
    link, token = _new_link(LinkKind.CONNECT, provider.key, created_by, now)
    link.expected_email = email
    db.session.flush()
    _record(link, "created", actor=link.created_by)
    return base + LINK_PATH + token


def _base_url() -> str:
    """Where links point: ``VAULT_BASE_URL``, else (in a request) this request's host.

    Checked before anything is added, so a refusal leaves the caller's session untouched.
    """
    base = current_app.config["VAULT_BASE_URL"]
    if not base:
        if not has_request_context():
            raise LinkError("VAULT_BASE_URL is not set, so no link can be made outside a "
                            "request.", 500)
        base = request.host_url
    return str(base).rstrip("/")


def open_link(token: str, now: datetime) -> AccessLink:
    """The usable link for ``token``; raises :class:`LinkError` saying why it is not."""
    link = find(token)
    if link is None:
        raise LinkError("This link is not valid. Ask whoever sent it for a new one.", 404)
    reason = unusable_reason(link, now)
    if reason is not None:
        raise LinkError(reason, 410)
    return link


def unusable_reason(link: AccessLink, now: datetime) -> str | None:
    """Why ``link`` cannot be used (for its page and for the admin's list), or None."""
    if link.used_at is not None:
        return "This link was already used. Each link works once; ask for a new one if needed."
    if link.revoked_at is not None and link.revoked_by == LINK_VOIDED_BY:
        return ("This account was reconnected or switched off since this link was made; "
                "ask whoever sent it for a new one if it is needed again.")
    if link.revoked_at is not None:
        return "This link was withdrawn. Ask whoever sent it for a new one."
    if link.expires_at <= now:
        return "This link has expired. Ask whoever sent it for a new one."
    if _browser_provider(link.provider) is None:
        return "This link's provider can no longer be connected here."
    if link.kind == LinkKind.RECONNECT.value:
        connection = db.session.get(Connection, link.connection_id)
        if connection is None or connection.status == ConnectionStatus.ACTIVE.value:
            return "This account is connected again already; there is nothing left to do."
        if connection.status not in RECONNECTABLE:
            return "This connection was switched off here; ask whoever sent the link."
    return None


def describe(link: AccessLink) -> LinkView:
    """The provider's title and the account, its e-mail partly masked, for the link's pages."""
    provider = _browser_provider(link.provider)
    title = provider.title if provider is not None else link.provider
    if link.kind == LinkKind.RECONNECT.value:
        connection = db.session.get(Connection, link.connection_id)
        shown = (connection.account_email or connection.account_name or "") if connection else ""
        account = mask_email(shown) if "@" in shown else shown or "the connected account"
    else:
        account = mask_email(link.expected_email or "")
    return LinkView(link.id, link.kind, title, account)


def mask_email(email: str) -> str:
    """``j***@example.com``: enough for the owner to recognise, little for anyone else."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else f"{local[:1]}***"


def record_opened(link: AccessLink) -> None:
    """Audit that someone opened ``link``'s page (not committed)."""
    _record(link, "opened", actor="anonymous")


def record_refused(link: AccessLink | None, reason: str) -> None:
    """Audit a refused use of a link (not committed); ``link`` None: no link matched."""
    if link is None:
        audit.record("reconnect_link.refused", actor="anonymous", outcome="failure",
                     detail=reason)
        return
    _record(link, "refused", actor="anonymous", outcome="failure", detail=reason)


def complete(
    link_id: int, provider: Provider, token: dict[str, Any], claims: dict[str, Any],
    account: Account, now: datetime,
) -> Connection:
    """Store a flow's answer through link ``link_id``, consuming the link; not committed.

    The answer counts only for the link's account (reconnect: the same ``sub``; connect: the
    expected, verified e-mail). Raises :class:`LinkError` (nothing stored) otherwise, or when
    the link was used, revoked or expired, or its connection became active, meanwhile.
    """
    link = db.session.get(AccessLink, link_id)
    if link is None or link.provider != provider.key:
        raise LinkError("This link is not valid. Ask whoever sent it for a new one.", 404)
    _check_account(link, claims, account)
    if not _consume(link, now):
        db.session.refresh(link)
        raise LinkError(unusable_reason(link, now) or "This link can no longer be used.", 410)
    creator = db.session.get(User, link.created_by_id) if link.created_by_id else None
    connection, _created = record_grant(
        provider, token, account,
        creator if link.kind == LinkKind.CONNECT.value else None, actor=link_actor(link.id),
        owner=link.expected_email,
    )
    link.connection_id = connection.id
    _record(link, "used", actor=link_actor(link.id), connection=connection)
    return connection


def revoke(link: AccessLink, *, actor: User, now: datetime) -> None:
    """Withdraw ``link`` (audited, not committed); a used or revoked one cannot be."""
    if link.used_at is not None or link.revoked_at is not None:
        raise LinkError("This link was used or withdrawn already.", 409)
    link.revoked_at = now
    link.revoked_by = actor.email
    _record(link, "revoked", actor=actor)


def links_of_connection(connection: Connection) -> list[AccessLink]:
    """Every link made for ``connection`` (connect links it came from included), newest first."""
    return list(db.session.scalars(
        select(AccessLink).where(AccessLink.connection_id == connection.id)
        .order_by(AccessLink.created_at.desc(), AccessLink.id.desc())
    ))


def connect_links(provider_key: str | None = None) -> list[AccessLink]:
    """Connect links, of one provider or all, newest first."""
    statement = select(AccessLink).where(AccessLink.kind == LinkKind.CONNECT.value)
    if provider_key is not None:
        statement = statement.where(AccessLink.provider == provider_key)
    return list(db.session.scalars(
        statement.order_by(AccessLink.created_at.desc(), AccessLink.id.desc())
    ))


def state_of(link: AccessLink, now: datetime) -> str:
    """One word for lists: used, revoked, expired or open."""
    if link.used_at is not None:
        return "used"
    if link.revoked_at is not None:
        return "revoked"
    return "expired" if link.expires_at <= now else "open"


def _new_link(
    kind: LinkKind, provider_key: str, created_by: str | None, now: datetime
) -> tuple[AccessLink, str]:
    token = secrets.token_urlsafe(32)
    hours = current_app.config["VAULT_RECONNECT_LINK_HOURS"]
    creator = None
    if created_by is not None:
        creator = db.session.scalar(select(User).where(User.email == created_by))
    link = AccessLink(
        kind=kind.value, token_hash=hash_key(token), provider=provider_key,
        created_by=created_by or ALERTS_ACTOR,
        created_by_id=creator.id if creator is not None else None,
        created_at=now, expires_at=now + timedelta(hours=hours),
    )
    db.session.add(link)
    return link, token


def find(token: str) -> AccessLink | None:
    """The link whose token is ``token``, whatever its state (looked up by hash)."""
    if not _TOKEN_SHAPE.fullmatch(token or ""):
        return None
    return db.session.scalar(select(AccessLink).where(AccessLink.token_hash == hash_key(token)))


def _check_account(link: AccessLink, claims: dict[str, Any], account: Account) -> None:
    if link.kind == LinkKind.RECONNECT.value:
        connection = db.session.get(Connection, link.connection_id)
        if connection is None or account.subject != connection.account_subject:
            raise LinkError("You signed in as another account than the one this link is for. "
                            "Nothing was stored; sign in with the right account and use the "
                            "link again.", 403)
        return
    verified = claims.get("email_verified") in (True, "true")
    if not verified or (account.email or "").strip().lower() != link.expected_email:
        raise LinkError("This account's verified e-mail is not the one this link is for. "
                        "Nothing was stored.", 403)


def _consume(link: AccessLink, now: datetime) -> bool:
    """Mark the link used if, at this moment, it still may be: one UPDATE, so two callbacks
    racing with one link cannot both pass (the second finds ``used_at`` set)."""
    still_usable = [
        AccessLink.id == link.id, AccessLink.used_at.is_(None), AccessLink.revoked_at.is_(None),
        AccessLink.expires_at > now,
    ]
    if link.kind == LinkKind.RECONNECT.value:
        still_usable.append(exists().where(
            Connection.id == AccessLink.connection_id,
            Connection.status.in_(RECONNECTABLE),
        ))
    result = db.session.execute(
        update(AccessLink).where(*still_usable).values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for UPDATE
        return False
    link.used_at = now
    return True


def _browser_provider(key: str) -> Provider | None:
    provider = current_app.extensions["providers"].get(key)
    if provider is None or not provider.is_oauth or provider.uses_client_credentials:
        return None
    if provider.uses_device_flow:
        return None  # its person enters a code at the provider: no redirect to send them on
    return provider


def _record(
    link: AccessLink, event: str, *, actor: User | str | None,
    connection: Connection | None = None, outcome: str = "success", detail: str | None = None,
) -> None:
    account = link.expected_email if link.kind == LinkKind.CONNECT.value else None
    if connection is None and link.connection_id is not None:
        connection = db.session.get(Connection, link.connection_id)
    if connection is not None:
        account = connection.account_email or connection.account_subject
    audit.record(
        f"{link.kind}_link.{event}", target=f"{link.provider}:{account or '?'}",
        connection=connection, actor=actor, outcome=outcome,
        detail=f"link #{link.id}" + (f": {detail}" if detail else ""),
    )
