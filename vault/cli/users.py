"""``flask users ...``: staff accounts (docs/architecture.md, "Commands")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from vault import audit
from vault.extensions import db
from vault.models import Role, User
from vault.services import accounts, throttle

ROLE_CHOICE = click.Choice([role.value for role in Role])


@contextmanager
def _reported_as_usage_errors() -> Iterator[None]:
    # An account the command cannot create or change: say why in one line, exit status 1.
    try:
        yield
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None


@click.command("create")
@click.argument("email")
@click.option("--role", type=ROLE_CHOICE, required=True, help="admin or viewer")
@click.option("--password", help="Prompted for (hidden, twice) when not given.")
@with_appcontext
def create_user_command(email: str, role: str, password: str | None) -> None:
    """Create a staff account."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _reported_as_usage_errors():
        user = accounts.create_user(email, role, password)
    audit.record("user.created", target=user.email, actor="cli", detail=f"role={role}")
    db.session.commit()
    click.echo(f"Created {role} {user.email}.")


@click.command("create-first-admin")
@click.option("--email", default="admin@localhost", show_default=True)
@with_appcontext
def create_first_admin_command(email: str) -> None:
    """Create an admin with a one-time password, only when no user exists yet."""
    if accounts.count_users() > 0:
        click.echo("Staff accounts exist already; no admin created.")
        return
    password = accounts.generate_password()
    user = accounts.create_user(email, Role.ADMIN.value, password, must_change_password=True)
    audit.record("user.created", target=user.email, actor="cli", detail="first admin")
    db.session.commit()
    click.echo("Created the first admin account. Sign in and choose a new password:")
    click.echo(f"  e-mail:   {user.email}")
    click.echo(f"  password: {password}   (one-time: you must change it after signing in)")


@click.command("list")
@with_appcontext
def list_users_command() -> None:
    """List staff accounts."""
    for user in db.session.scalars(select(User).order_by(User.email)):
        state = "enabled" if user.enabled else "disabled"
        click.echo(f"{user.email}\t{user.role}\t{state}")


@click.command("set-role")
@click.argument("email")
@click.argument("role", type=ROLE_CHOICE)
@with_appcontext
def set_role_command(email: str, role: str) -> None:
    """Make a staff account an admin or a viewer (from its next request on)."""
    with _reported_as_usage_errors():
        user, previous = accounts.set_role(email, role)
    if previous == role:
        click.echo(f"{user.email} is already {role}.")
        return
    audit.record(
        "user.role_changed", target=user.email, actor="cli", detail=f"{previous} -> {role}"
    )
    db.session.commit()
    click.echo(f"{user.email} is now {role} (was {previous}).")


@click.command("disable")
@click.argument("email")
@with_appcontext
def disable_user_command(email: str) -> None:
    """Disable a staff account; its sessions end for good (enabling does not revive them)."""
    _set_enabled(email, enabled=False)


@click.command("enable")
@click.argument("email")
@with_appcontext
def enable_user_command(email: str) -> None:
    """Enable a disabled staff account again."""
    _set_enabled(email, enabled=True)


@click.command("reset-password")
@click.argument("email")
@with_appcontext
def reset_password_command(email: str) -> None:
    """Give an account a one-time password and end its sessions; printed once."""
    with _reported_as_usage_errors():
        user, password = accounts.reset_password(email)
    # Whoever was locked out by failed attempts is let in at once with the new password.
    throttle.forget(throttle.SIGN_IN_PER_EMAIL, user.email)
    audit.record("user.password_reset", target=user.email, actor="cli")
    db.session.commit()
    click.echo(f"Reset the password of {user.email}; every session of the account has ended.")
    if not user.enabled:
        click.echo("The account is disabled: enable it to let them sign in.")
    click.echo(f"  password: {password}   (one-time: it must be changed after signing in)")


def _set_enabled(email: str, *, enabled: bool) -> None:
    state = "enabled" if enabled else "disabled"
    with _reported_as_usage_errors():
        user, was_enabled = accounts.set_enabled(email, enabled)
    if was_enabled == enabled:
        click.echo(f"{user.email} is already {state}.")
        return
    audit.record(f"user.{state}", target=user.email, actor="cli")
    db.session.commit()
    click.echo(f"{user.email} is {state}.")


COMMANDS = [
    create_user_command,
    create_first_admin_command,
    list_users_command,
    set_role_command,
    disable_user_command,
    enable_user_command,
    reset_password_command,
]
