"""``flask service-keys create|list|revoke``: API keys for the company's integrations."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from vault.extensions import db
from vault.services import service_keys


@click.command("create")
@click.argument("name")
@click.option(
    "--provider", "providers", multiple=True, metavar="KEY",
    help="Allow only this provider's connections (repeatable) [default: all providers].",
)
@with_appcontext
def create_command(name: str, providers: tuple[str, ...]) -> None:
    """Create a key; it is printed once, as the last line, and stored only as a hash."""
    known = {provider.key for provider in current_app.extensions["providers"]}
    try:
        row, key = service_keys.create_key(name, list(providers), known)
    except service_keys.ServiceKeyError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    scope = ", ".join(row.allowed_providers) or "all providers"
    click.echo(f"Created service key {row.name!r} for {scope}.")
    click.echo("Store it now: it is shown only once. Integrations send it as "
               "'Authorization: Bearer <key>'.")
    click.echo(key)


@click.command("list")
@with_appcontext
def list_command() -> None:
    """List keys: name, prefix, providers, last use and state (never the key)."""
    rows = service_keys.list_keys()
    if not rows:
        click.echo("No service keys.")
        return
    for row in rows:
        state = f"revoked {_when(row.revoked_at)}" if row.revoked_at else "active"
        providers = ",".join(row.allowed_providers) or "*"
        click.echo(f"{row.name}\t{row.key_prefix}…\t{providers}\t"
                   f"last used {_when(row.last_used_at) or 'never'}\t{state}")


@click.command("revoke")
@click.argument("name")
@with_appcontext
def revoke_command(name: str) -> None:
    """Revoke a key at once; requests with it are refused from now on."""
    try:
        service_keys.revoke_key(name)
    except service_keys.ServiceKeyError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Revoked service key {name!r}.")


def _when(moment) -> str | None:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else None


COMMANDS = [create_command, list_command, revoke_command]
