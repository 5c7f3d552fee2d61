"""Password hashing and the account services behind sign-in."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from tests.support.builders import make_user
from vault.services import accounts


def test_passwords_are_hashed_with_argon2id_at_rfc_9106_strength(app, monkeypatch):
    monkeypatch.undo()  # the suite swaps in cheap parameters; look at the real ones
    user = make_user("strong@example.com", password="A-Long-Passphrase-1")

    parameters = extract_parameters(user.password_hash)

    assert parameters.type is Type.ID
    # argon2-cffi's defaults: RFC 9106's second recommended option (64 MiB, 3 passes).
    assert (parameters.memory_cost, parameters.time_cost) == (64 * 1024, 3)
    assert "A-Long-Passphrase-1" not in user.password_hash


def test_an_outdated_hash_is_upgraded_when_the_password_is_next_used(app, db):
    user = make_user("old@example.com", password="A-Long-Passphrase-1")
    weak = PasswordHasher(time_cost=1, memory_cost=256, parallelism=1)
    user.password_hash = weak.hash("A-Long-Passphrase-1")

    assert accounts.check_password(user, "A-Long-Passphrase-1")

    assert not accounts._hasher.check_needs_rehash(user.password_hash)
    assert extract_parameters(user.password_hash).memory_cost == accounts._hasher.memory_cost


def test_passwords_shorter_than_the_minimum_are_refused(app):
    with pytest.raises(accounts.AccountError, match="at least 12 characters"):
        make_user("short@example.com", password="too-short")


def test_the_session_marker_changes_with_the_password_and_reveals_nothing(app):
    user = make_user("marker@example.com")
    before = accounts.session_marker(user)

    accounts.set_password(user, "Another-Password-2")

    assert accounts.session_marker(user) != before
    assert len(before) == 16 and before not in user.password_hash


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"email": "a@corp.example"}, "has not verified"),
        ({"email": "a@corp.example", "email_verified": False}, "has not verified"),
        ({"email": "a@corp.example", "email_verified": "false"}, "has not verified"),
        ({"email": "a@elsewhere.example", "email_verified": True}, "not in a domain allowed"),
        ({"email": "a@sub.corp.example", "email_verified": True}, "not in a domain allowed"),
        ({"email_verified": True}, "no e-mail address"),
        ({"email": "new@corp.example", "email_verified": True}, "there is no account"),
    ],
)
def test_single_sign_on_claims_that_may_not_sign_in(app, claims, problem):
    with pytest.raises(accounts.SignInError, match=problem):
        accounts.account_for_sso(claims, ("corp.example",), None)


def test_single_sign_on_accepts_a_verified_address_of_an_existing_user(app):
    user = make_user("known@corp.example", password=None)

    for verified in (True, "true"):
        claims = {"email": "Known@Corp.Example", "email_verified": verified}
        assert accounts.account_for_sso(claims, ("corp.example",), None) == (user, False)
