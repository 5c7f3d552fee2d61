"""``flask service-keys create|rotate|list|revoke``: API keys for the company's integrations."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import with_appcontext

from vault.extensions import db
from vault.models import utcnow
from vault.queries.service_keys import KeyState, key_state
from vault.services import service_keys

MAX_OVERLAP_HOURS = int(service_keys.MAX_OVERLAP.total_seconds() // 3600)
DEFAULT_OVERLAP_HOURS = int(service_keys.DEFAULT_OVERLAP.total_seconds() // 3600)


@click.command("create")
@click.argument("name")
@click.option(
    "--provider", "providers", multiple=True, metavar="KEY",
    help="Allow only this provider's connections (repeatable) [default: all providers].",
)
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG",
    help="Allow only connections carrying this tag (repeatable) [default: any].",
)
@click.option(
    "--expires-days", type=click.IntRange(1, service_keys.MAX_LIFETIME.days), metavar="N",
    help="The key stops working N days from now [default: never].",
)
@with_appcontext
def create_command(
    name: str, providers: tuple[str, ...], tags: tuple[str, ...], expires_days: int | None
) -> None:
    """Create a key; it is printed once, as the last line, and stored only as a hash."""
    known = {provider.key for provider in current_app.extensions["providers"]}
    expires_in = timedelta(days=expires_days) if expires_days else None
    try:
        row, key = service_keys.create_key(
            name, list(providers), known, tags=list(tags), expires_in=expires_in
        )
    except service_keys.ServiceKeyError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    scope = ", ".join(row.allowed_providers) or "all providers"
    if row.allowed_tags:
        scope += f", connections tagged {', '.join(row.allowed_tags)}"
    click.echo(f"Created service key {row.name!r} for {scope}.")
    if row.expires_at:
        click.echo(f"It expires at {_when(row.expires_at)}.")
    click.echo("Store it now: it is shown only once. Integrations send it as "
               "'Authorization: Bearer <key>'.")
    click.echo(key)


@click.command("rotate")
@click.argument("name")
@click.option(
    "--overlap-hours", type=click.IntRange(0, MAX_OVERLAP_HOURS), default=DEFAULT_OVERLAP_HOURS,
    show_default=True, metavar="N",
    help="How long the current key keeps working beside the new one (0: it stops now).",
)
@with_appcontext
def rotate_command(name: str, overlap_hours: int) -> None:
    """Give a key a new secret with the same restrictions; printed once, as the last line."""
    try:
        row, key = service_keys.rotate_key(name, timedelta(hours=overlap_hours))
    except service_keys.ServiceKeyError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Rotated service key {row.name!r}.")
    if overlap_hours:
        click.echo(f"The previous key ({row.previous_key_prefix}…) keeps working until "
                   f"{_when(row.previous_key_expires_at)}.")
    else:
        click.echo(f"The previous key ({row.previous_key_prefix}…) has stopped working.")
    click.echo("Store the new key now: it is shown only once.")
    click.echo(key)


@click.command("list")
@with_appcontext
def list_command() -> None:
    """List keys: name, prefix, providers, tags, last use, expiry and state (never the key)."""
    rows = service_keys.list_keys()
    if not rows:
        click.echo("No service keys.")
        return
    now = utcnow()
    for row in rows:
        shown = key_state(row, now)
        words = {KeyState.LIVE: "active", KeyState.REVOKED: f"revoked {_when(row.revoked_at)}"}
        state = words.get(shown, shown.label)
        providers = ",".join(row.allowed_providers) or "*"
        tags = ",".join(row.allowed_tags or []) or "*"
        click.echo(f"{row.name}\t{row.key_prefix}…\t{providers}\ttags {tags}\t"
                   f"last used {_when(row.last_used_at) or 'never'}\t"
                   f"expires {_when(row.expires_at) or 'never'}\t"
                   f"created by {row.created_by or 'unknown'}\t{state}")


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


COMMANDS = [create_command, rotate_command, list_command, revoke_command]
