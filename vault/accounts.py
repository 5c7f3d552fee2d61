"""Staff accounts: creation, password hashing (Argon2id) and checking."""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select

from vault.extensions import db
from vault.models import Role, User

_hasher = PasswordHasher()  # argon2-cffi's defaults follow RFC 9106's recommendations
MIN_PASSWORD_LENGTH = 12


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the e-mail is unknown, so both paths cost the same time.
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user could not be created or changed; the message says why."""


def normalize_email(email: str) -> str:
    """E-mail addresses compare case-insensitively and without surrounding blanks."""
    return email.strip().lower()


def find_user(email: str) -> User | None:
    """The user with this e-mail address, or None."""
    return db.session.scalar(select(User).where(User.email == normalize_email(email)))


def create_user(
    email: str, role: str, password: str | None = None, *, must_change_password: bool = False
) -> User:
    """Add a user (not committed). ``password=None`` makes an account only SSO can sign in."""
    email = normalize_email(email)
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        raise AccountError(f"{email!r} is not an e-mail address")
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
