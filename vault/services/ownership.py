"""Who owns a connection, what it is for, and its tags: the one place these are checked.

An *owner* is an e-mail address (a staff user's or anyone's), lower-cased; a connection's
owner is by default whoever connected it (:func:`default_owner`, used where connections are
created, :func:`vault.services.connections.record_grant` and friends). The *purpose* is one
sentence. *Tags* are a few short labels (``billing``, ``calendar``) that filters and
tag-restricted service keys read through ``connection_tags``. The normalising functions
here (:func:`owner_of`, :func:`tag_of`, :func:`tags_of`, :func:`purpose_of`) serve the
dashboard's forms and filters and the token API's parameters alike.

Changes are audited with their before and after (``connection.owner_changed``,
``connection.details_changed``); the services add and flush, the caller commits once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select

from vault import audit
from vault.extensions import db
from vault.models import Connection, ConnectionTag, User
from vault.services.accounts import AccountError, checked_email

MAX_TAGS = 10
MAX_PURPOSE = 500
TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# How a form's tags may be separated: commas, blanks, or both.
_TAG_SEPARATORS = re.compile(r"[\s,]+")


class OwnershipError(ValueError):
    """Owner, purpose or tags as given cannot be stored; the message says why (no secrets)."""

    def __init__(self, message: str, field: str = "owner"):
        super().__init__(message)
        self.field = field


def owner_of(value: str | None) -> str | None:
    """An owner as stored: the e-mail lower-cased, or None for none; raises when not one."""
    if value is None or not value.strip():
        return None
    try:
        return checked_email(value)
    except AccountError as error:
        raise OwnershipError(str(error)) from None


def tag_of(value: str) -> str:
    """One tag as stored (lower-cased); raises :class:`OwnershipError` for anything else."""
    tag = value.strip().lower()
    if not TAG_PATTERN.fullmatch(tag):
        shown = tag.encode("unicode_escape").decode("ascii")[:40]
        raise OwnershipError(
            f"{shown!r} is not a tag: use 1 to 32 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit.", "tags"
        )
    return tag


def tags_of(values: Iterable[str]) -> list[str]:
    """Tags as stored: each checked, duplicates dropped, sorted; at most :data:`MAX_TAGS`."""
    tags = sorted({tag_of(value) for value in values if value.strip()})
    if len(tags) > MAX_TAGS:
        raise OwnershipError(f"At most {MAX_TAGS} tags; {len(tags)} were given.", "tags")
    return tags


def split_tags(text: str | None) -> list[str]:
    """The tags of a form's one text field, separated by commas or blanks (not yet checked)."""
    return [part for part in _TAG_SEPARATORS.split(text or "") if part]


def purpose_of(value: str | None) -> str | None:
    """A purpose as stored: one line, blanks collapsed, at most :data:`MAX_PURPOSE` characters."""
    text = " ".join((value or "").split())
    if any(unicodedata.category(character) in ("Cc", "Cf") for character in text):
        # Bidi overrides and invisible characters would make the page say one thing and
        # mean another.
        raise OwnershipError("The purpose may not contain control or formatting characters.",
                             "purpose")
    if len(text) > MAX_PURPOSE:
        raise OwnershipError(
            f"The purpose is one sentence of at most {MAX_PURPOSE} characters; this one has "
            f"{len(text)}.", "purpose"
        )
    return text or None


def default_owner(user: User | None, named: str | None = None) -> str | None:
    """The owner a new connection gets: the e-mail ``named`` for it (a connect link's), else
    whoever connected it."""
    email = named or (user.email if user is not None else None)
    return email.strip().lower() if email else None


def current_tags(connection: Connection) -> list[str]:
    """``connection``'s tags, sorted."""
    return list(db.session.scalars(
        select(ConnectionTag.tag).where(ConnectionTag.connection_id == connection.id)
        .order_by(ConnectionTag.tag)
    ))


def update_details(
    connection: Connection, *, owner: str | None, purpose: str | None, tags: Sequence[str],
    actor: User | str,
) -> list[str]:
    """Set owner, purpose and tags from a form's raw values; returns what changed.

    Everything is checked before anything is written, so a bad value changes nothing.
    Audited: ``connection.owner_changed`` for a new owner, ``connection.details_changed``
    for purpose and tags, each with before and after. Not committed.
    """
    new_owner = owner_of(owner)
    new_purpose = purpose_of(purpose)
    new_tags = tags_of(tags)
    changed = []
    if new_owner != connection.owner_email:
        _set_owner(connection, new_owner, actor)
        changed.append("owner")
    details = []
    if new_purpose != connection.purpose:
        details.append(f"purpose: {_quoted(connection.purpose)} -> {_quoted(new_purpose)}")
        connection.purpose = new_purpose
        changed.append("purpose")
    old_tags = current_tags(connection)
    if new_tags != old_tags:
        _replace_tags(connection, new_tags)
        details.append(f"tags: [{', '.join(old_tags)}] -> [{', '.join(new_tags)}]")
        changed.append("tags")
    if details:
        audit.record("connection.details_changed", target=_target(connection),
                     connection=connection, actor=actor, detail="; ".join(details))
    db.session.flush()
    return changed


def transfer(connection: Connection, new_owner: str | None, *, actor: User | str) -> bool:
    """Give ``connection`` to ``new_owner`` (checked; audited); False when it already was."""
    owner = owner_of(new_owner)
    if owner is None:
        raise OwnershipError("Name the new owner's e-mail address.")
    if owner == connection.owner_email:
        return False
    _set_owner(connection, owner, actor)
    db.session.flush()
    return True


def transfer_all(from_owner: str, new_owner: str | None, *, actor: User | str) -> int:
    """Give every connection ``from_owner`` owns to ``new_owner`` (each audited); how many."""
    owner = owner_of(new_owner)
    if owner is None:
        raise OwnershipError("Name the new owner's e-mail address.")
    if owner == from_owner:
        raise OwnershipError("The new owner is the one they have already.")
    owned = db.session.scalars(
        select(Connection).where(Connection.owner_email == from_owner).order_by(Connection.id)
    ).all()
    for connection in owned:
        _set_owner(connection, owner, actor)
    db.session.flush()
    return len(owned)


def _set_owner(connection: Connection, owner: str | None, actor: User | str) -> None:
    audit.record(
        "connection.owner_changed", target=_target(connection), connection=connection,
        actor=actor, detail=f"owner: {connection.owner_email or 'none'} -> {owner or 'none'}",
    )
    connection.owner_email = owner


def _replace_tags(connection: Connection, tags: Sequence[str]) -> None:
    db.session.execute(delete(ConnectionTag).where(ConnectionTag.connection_id == connection.id))
    db.session.add_all(ConnectionTag(connection_id=connection.id, tag=tag) for tag in tags)


def _quoted(text: str | None) -> str:
    return f'"{text}"' if text else "none"


def _target(connection: Connection) -> str:
    return f"{connection.provider}:{connection.account_email or connection.account_subject}"
