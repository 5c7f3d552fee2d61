"""``flask users ...``: creating, listing, promoting, disabling staff accounts (all audited)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.support.builders import DEFAULT_PASSWORD, login, make_user
from vault.extensions import db
from vault.models import AuditEvent, User
from vault.services import accounts


def events(action: str) -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def user(email: str) -> User:
    db.session.expire_all()
    return accounts.find_user(email)


def test_create_with_a_password_makes_an_account_that_can_sign_in(runner, client):
    result = runner.invoke(
        args=["users", "create", "New@Example.com", "--role", "viewer", "--password",
              DEFAULT_PASSWORD]
    )

    assert result.exit_code == 0, result.output
    assert result.output == "Created viewer new@example.com.\n"
    assert login(client, "new@example.com").status_code == 302
    [event] = events("user.created")
    assert (event.actor, event.target, event.detail) == ("cli", "new@example.com", "role=viewer")
    assert DEFAULT_PASSWORD not in result.output


def test_create_prompts_twice_for_a_hidden_password_when_none_is_given(runner):
    result = runner.invoke(
        args=["users", "create", "asked@example.com", "--role", "admin"],
        input=f"{DEFAULT_PASSWORD}\n{DEFAULT_PASSWORD}\n",
    )

    assert result.exit_code == 0, result.output
    assert DEFAULT_PASSWORD not in result.output
    assert accounts.check_password(user("asked@example.com"), DEFAULT_PASSWORD)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["users", "create", "x@example.com", "--role", "viewer", "--password", "short"],
         "at least 12 characters"),
        (["users", "create", "not-an-address", "--role", "viewer", "--password", DEFAULT_PASSWORD],
         "is not an e-mail address"),
    ],
)
def test_create_refuses_what_cannot_work(runner, args, message):
    result = runner.invoke(args=args)

    assert result.exit_code == 1 and message in result.output
    assert events("user.created") == []


def test_create_first_admin_must_change_its_one_time_password(runner):
    result = runner.invoke(args=["users", "create-first-admin", "--email", "boss@example.com"])

    assert result.exit_code == 0
    assert user("boss@example.com").must_change_password is True
    assert runner.invoke(args=["users", "create-first-admin"]).output.startswith(
        "Staff accounts exist already"
    )


def test_list_shows_role_and_state(runner, app):
    make_user("b@example.com", role="admin")
    make_user("a@example.com", enabled=False)

    result = runner.invoke(args=["users", "list"])

    assert result.output == "a@example.com\tviewer\tdisabled\nb@example.com\tadmin\tenabled\n"


def test_set_role_promotes_and_demotes_and_is_audited(runner, admin_user, viewer_user):
    result = runner.invoke(args=["users", "set-role", "VIEWER@example.com", "admin"])

    assert result.exit_code == 0, result.output
    assert result.output == "viewer@example.com is now admin (was viewer).\n"
    assert user("viewer@example.com").role == "admin"
    [event] = events("user.role_changed")
    assert (event.actor, event.target, event.detail) == (
        "cli", "viewer@example.com", "viewer -> admin",
    )

    assert runner.invoke(args=["users", "set-role", "viewer@example.com", "viewer"]).exit_code == 0
    assert user("viewer@example.com").role == "viewer"


def test_set_role_to_the_same_role_changes_and_records_nothing(runner, viewer_user):
    result = runner.invoke(args=["users", "set-role", "viewer@example.com", "viewer"])

    assert result.output == "viewer@example.com is already viewer.\n"
    assert events("user.role_changed") == []


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["users", "set-role", "nobody@example.com", "admin"], 1, "there is no user"),
        (["users", "set-role", "viewer@example.com", "owner"], 2, "'owner' is not one of"),
        (["users", "disable", "nobody@example.com"], 1, "there is no user"),
    ],
)
def test_commands_on_unknown_users_or_roles_fail_clearly(
    runner, viewer_user, args, exit_code, message
):
    result = runner.invoke(args=args)

    assert result.exit_code == exit_code and message in result.output


def test_the_last_enabled_admin_can_be_neither_demoted_nor_disabled(runner, admin_user):
    for args in (["users", "set-role", "admin@example.com", "viewer"],
                 ["users", "disable", "admin@example.com"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1
        assert "admin@example.com is the last enabled admin" in result.output

    make_user("second@example.com", role="admin")
    assert runner.invoke(args=["users", "disable", "admin@example.com"]).exit_code == 0
    assert runner.invoke(args=["users", "set-role", "second@example.com", "viewer"]).exit_code == 1


def test_disable_signs_the_user_out_at_the_next_request_and_enable_lets_them_back(
    runner, viewer_client, client
):
    result = runner.invoke(args=["users", "disable", "viewer@example.com"])

    assert result.output == "viewer@example.com is disabled.\n"
    assert viewer_client.get("/").headers["Location"].startswith("/login")
    assert login(client, "viewer@example.com").status_code == 200
    assert [e.actor for e in events("user.disabled")] == ["cli"]

    assert runner.invoke(args=["users", "enable", "viewer@example.com"]).exit_code == 0
    assert login(client, "viewer@example.com").status_code == 302
    assert [e.target for e in events("user.enabled")] == ["viewer@example.com"]


def test_disabling_twice_is_harmless(runner, viewer_user):
    runner.invoke(args=["users", "disable", "viewer@example.com"])

    result = runner.invoke(args=["users", "disable", "viewer@example.com"])

    assert result.output == "viewer@example.com is already disabled.\n"
    assert len(events("user.disabled")) == 1
