"""``flask`` commands: ``users ...`` and ``vault ...`` (DESIGN.md section 2)."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import select

from vault import accounts, audit
from vault.extensions import db
from vault.models import Role, User

users_cli = AppGroup("users", help="Manage staff accounts.")
vault_cli = AppGroup("vault", help="Operate on the encrypted vault.")

ROLE_CHOICE = click.Choice([role.value for role in Role])


def register_commands(app: Flask) -> None:
    """Attach every command group to the app."""
    app.cli.add_command(users_cli)
    app.cli.add_command(vault_cli)


@users_cli.command("create")
@click.argument("email")
@click.option("--role", type=ROLE_CHOICE, required=True, help="admin or viewer")
@click.option("--password", help="Prompted for (hidden, twice) when not given.")
def create_user_command(email: str, role: str, password: str | None) -> None:
    """Create a staff account."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = accounts.create_user(email, role, password)
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None
    audit.record("user.created", target=user.email, actor="cli", detail=f"role={role}")
    db.session.commit()
    click.echo(f"Created {role} {user.email}.")


@users_cli.command("create-first-admin")
@click.option("--email", default="admin@localhost", show_default=True)
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


@users_cli.command("list")
def list_users_command() -> None:
    """List staff accounts."""
    for user in db.session.scalars(select(User).order_by(User.email)):
        state = "enabled" if user.enabled else "disabled"
        click.echo(f"{user.email}\t{user.role}\t{state}")
