"""Staff accounts: creation, password hashing (Argon2id), sign-in checks and role changes."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

import email_validator
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select

from vault.extensions import db
from vault.models import Role, User, utcnow

_hasher = PasswordHasher()  # argon2-cffi's defaults follow RFC 9106's recommendations
MIN_PASSWORD_LENGTH = 12


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the e-mail is unknown, so both paths cost the same time.
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user could not be created or changed; the message says why."""


class SignInError(AccountError):
    """A sign-in was refused. The message is for the audit log; users see a generic one."""


def normalize_email(email: str) -> str:
    """E-mail addresses compare case-insensitively and without surrounding blanks."""
    return email.strip().lower()


def checked_email(email: str, error: type[AccountError] = AccountError) -> str:
    """``email`` normalised, or ``error`` when it is not an e-mail address.

    The syntax check is email-validator's: it refuses control characters, bidi overrides
    and other invisible characters, quoted local parts and IP-address domains. No mail is
    ever sent to a staff address, so neither deliverability nor special-use domains
    (``admin@localhost``, the first admin's default) matter, and nothing is looked up in DNS.
    The message names the problem and quotes the address with its invisible characters
    escaped, so it is safe in a terminal and in the audit log.
    """
    normalized = normalize_email(email)
    _allow_special_use_domains()
    try:
        email_validator.validate_email(
            normalized, check_deliverability=False, globally_deliverable=False
        )
    except email_validator.EmailNotValidError as problem:
        raise error(f"{normalized!r} is not an e-mail address: {problem}") from None
    return normalized


@functools.cache
def _allow_special_use_domains() -> None:
    # The library's documented switch (its README, "Test addresses"): it refuses localhost,
    # .local, .test and the like only to keep mail from going there, and none is sent here.
    email_validator.SPECIAL_USE_DOMAIN_NAMES.clear()


def find_user(email: str) -> User | None:
    """The user with this e-mail address, or None."""
    return db.session.scalar(select(User).where(User.email == normalize_email(email)))


def create_user(
    email: str, role: str, password: str | None = None, *, must_change_password: bool = False
) -> User:
    """Add a user (not committed). ``password=None`` makes an account only SSO can sign in."""
    email = checked_email(email)
    if role not in {r.value for r in Role}:
        raise AccountError(f"role must be admin or viewer, not {role!r}")
    if find_user(email) is not None:
        raise AccountError(f"a user with e-mail {email} already exists")
    user = User(email=email, role=role, must_change_password=must_change_password)
    if password is not None:
        set_password(user, password)
    db.session.add(user)
    db.session.flush()
    return user


def set_password(user: User, password: str) -> None:
    """Hash and set a new password, enforcing the minimum length."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = _hasher.hash(password)


def check_password(user: User | None, password: str) -> bool:
    """True when ``password`` matches; upgrades the hash when its parameters are outdated."""
    stored = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
    if user is None or not user.password_hash:
        return False
    if _hasher.check_needs_rehash(stored):
        user.password_hash = _hasher.hash(password)
    return True


def count_users() -> int:
    """How many staff accounts exist."""
    return db.session.scalar(select(func.count(User.id))) or 0


def generate_password() -> str:
    """A random password for a first account (shown once)."""
    return secrets.token_urlsafe(18)


def authenticate(email: str, password: str) -> User:
    """The enabled user with this e-mail and password; raises :class:`SignInError`.

    The password is checked even for a disabled account, so the answer takes the same time.
    Something that is no e-mail address is refused before the database is asked.
    """
    email = checked_email(email, SignInError)
    user = find_user(email)
    matches = check_password(user, password)  # hashes even for no user: same time taken
    if user is None or not matches:
        raise SignInError("no such account" if user is None else "wrong password")
    if not user.enabled:
        raise SignInError("account disabled")
    return user


def change_password(user: User, current: str, new: str) -> None:
    """Replace the password after checking the current one; clears ``must_change_password``."""
    if not check_password(user, current):
        raise AccountError("The current password is not correct.")
    if new == current:
        raise AccountError("Choose a password different from the current one.")
    set_password(user, new)
    user.must_change_password = False


def session_marker(user: User) -> str:
    """A short fingerprint of the user's password hash and session epoch, kept in the session.

    A password change or a sign-out (:func:`end_every_session`) alters it, which ends the
    user's other sessions. The hash is salted Argon2 and this is a truncated SHA-256 of it,
    so the cookie reveals nothing usable.
    """
    fingerprinted = user.password_hash or ""
    if user.session_epoch:  # epoch 0 keeps the marker that sessions began with before epochs
        fingerprinted += f":{user.session_epoch}"
    return hashlib.sha256(fingerprinted.encode()).hexdigest()[:16]


def end_every_session(user: User) -> None:
    """End all of the user's sessions, including copies of their cookies (not committed)."""
    # In SQL, so that two sign-outs at the same moment move it on twice.
    user.session_epoch = User.session_epoch + 1


def note_sign_in(user: User) -> None:
    """Remember when the user last signed in."""
    user.last_login_at = utcnow()


def set_role(email: str, role: str) -> tuple[User, str]:
    """Give the user ``role``; returns the user and the previous role."""
    if role not in {r.value for r in Role}:
        raise AccountError(f"role must be admin or viewer, not {role!r}")
    user = _existing_user(email)
    previous = user.role
    if previous == Role.ADMIN.value and role != previous:
        _keep_an_admin(user)
    user.role = role
    return user, previous


def set_enabled(email: str, enabled: bool) -> tuple[User, bool]:
    """Enable or disable an account; returns the user and whether it was enabled before.

    Disabling ends the user's sessions for good: at their next request, and also after the
    account is enabled again, when a copied cookie must not come back to life.
    """
    user = _existing_user(email)
    previous = user.enabled
    if not enabled and user.is_admin:
        _keep_an_admin(user)
    if previous and not enabled:
        end_every_session(user)
    user.enabled = enabled
    return user, previous


def reset_password(email: str) -> tuple[User, str]:
    """Give the user a one-time password, to be changed at the next sign-in (not committed).

    Returns the user and the password, which is shown once and stored only as its hash.
    Every session of the user ends: whoever holds one may be why the password was reset.
    """
    user = _existing_user(email)
    password = generate_password()
    set_password(user, password)
    user.must_change_password = True
    end_every_session(user)
    return user, password


def account_for_sso(
    claims: Mapping[str, Any], allowed_domains: tuple[str, ...], auto_create_role: str | None
) -> tuple[User, bool]:
    """The user an identity provider's ID token claims may sign in as, and whether it is new.

    The e-mail must be verified by the provider and in an allowed domain; the account must
    exist and be enabled, unless ``auto_create_role`` lets a new one be created.
    """
    email = normalize_email(str(claims.get("email") or ""))
    if not email:
        raise SignInError("the identity provider sent no e-mail address")
    email = checked_email(email, SignInError)
    # Some providers send the boolean as a string.
    if claims.get("email_verified") not in (True, "true"):
        raise SignInError(f"the identity provider has not verified {email}")
    if email.rpartition("@")[2] not in allowed_domains:
        raise SignInError(f"{email} is not in a domain allowed to sign in here")
    user = find_user(email)
    if user is None and auto_create_role:
        return create_user(email, auto_create_role), True
    if user is None:
        raise SignInError(f"there is no account for {email}; ask an administrator")
    if not user.enabled:
        raise SignInError(f"the account {email} is disabled")
    return user, False


def _existing_user(email: str) -> User:
    user = find_user(checked_email(email))
    if user is None:
        raise AccountError(f"there is no user with e-mail {normalize_email(email)}")
    return user


def _keep_an_admin(user: User) -> None:
    # Demoting or disabling the last enabled admin would lock everyone out of admin actions.
    others = db.session.scalar(
        select(func.count(User.id)).where(
            User.role == Role.ADMIN.value, User.enabled.is_(True), User.id != user.id
        )
    )
    if user.enabled and not others:
        raise AccountError(f"{user.email} is the last enabled admin; make another admin first")
