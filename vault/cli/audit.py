"""``flask vault audit-export``, ``audit-seal``, ``audit-verify`` and ``audit-retention``."""

from __future__ import annotations

import sys
from datetime import datetime

import click
from flask import current_app
from flask.cli import with_appcontext

from vault.models import utcnow
from vault.queries.audit import AuditFilters, select_for_export
from vault.services.audit_chain import ChainBroken, chain_length, reseal, seal, verify
from vault.services.audit_export import FORMATS, start_export
from vault.services.audit_handouts import fold_handouts
from vault.services.audit_retention import apply_retention

_DAY = click.DateTime(formats=["%Y-%m-%d"])


@click.command("audit-export")
@click.option("--since", type=_DAY, required=True, help="First day (UTC), YYYY-MM-DD.")
@click.option("--until", type=_DAY, help="Last day (UTC), included; default: today.")
@click.option("--format", "format_", type=click.Choice(list(FORMATS)), default="csv",
              show_default=True)
@click.option("--action", help="Only this action, e.g. token.handed_out.")
@click.option("--actor", default="", help="Only actors containing this text.")
@click.option("--connection", type=click.IntRange(1), help="Only this connection id.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of standard output.")
@with_appcontext
def audit_export_command(since: datetime, until: datetime | None, format_: str,
                         action: str | None, actor: str, connection: int | None,
                         output: str | None) -> None:
    """Export audit events as CSV or JSON Lines (streamed; audited as an export by cli)."""
    filters = AuditFilters(
        action=action, actor=actor, connection_id=connection,
        since=since.date(), until=until.date() if until else None,
    )
    export = start_export(select_for_export(filters), format_, actor="cli")
    if output is None:
        for chunk in export.chunks:
            sys.stdout.write(chunk)
        sys.stdout.flush()
    else:
        with open(output, "w", encoding="utf-8", newline="") as file:
            for chunk in export.chunks:
                file.write(chunk)
    click.echo(f"Exported {export.count} audit event(s) as {format_}.", err=True)


@click.command("audit-seal")
@with_appcontext
def audit_seal_command() -> None:
    """Seal the audit rows written since the last run into the tamper-evident chain.

    Prints the chain's head: keep it somewhere else (a ticket, a log store) and pass it to
    ``audit-verify --anchor`` later, since deleting the newest sealed rows can only be proven
    against an anchor.
    """
    folded = fold_handouts(utcnow())
    result = seal()
    if folded:
        click.echo(f"Wrote {folded} hourly hand-out count(s) as audit events.")
    click.echo(f"Sealed {result.sealed} audit event(s).")
    if result.head_hash is not None:
        click.echo(f"Chain head: link {result.head_seq}, row #{result.head_id}, anchor "
                   f"{result.head_seq}:{bytes(result.head_hash).hex()}")


def _anchor(_context: click.Context, _parameter: click.Parameter,
            value: str | None) -> tuple[int, bytes] | None:
    if value is None:
        return None
    link, _, digest = value.partition(":")
    try:
        anchor = (int(link), bytes.fromhex(digest))
    except ValueError:
        anchor = (0, b"")
    if anchor[0] < 1 or len(anchor[1]) != 32:
        raise click.BadParameter("expected LINK:HASH as printed by audit-seal")
    return anchor


@click.command("audit-verify")
@click.option("--anchor", callback=_anchor, metavar="LINK:HASH",
              help="A head printed by audit-seal earlier: the chain must still reach it.")
@with_appcontext
def audit_verify_command(anchor: tuple[int, bytes] | None) -> None:
    """Walk the audit chain; report the first broken link and exit 1, or how many verified."""
    with click.progressbar(length=chain_length(), label="Verifying the audit chain",
                           file=sys.stderr) as bar:
        result = verify(anchor=anchor, progress=bar.update)
    unsealed = f" ({result.unsealed} not sealed yet)" if result.unsealed else ""
    if result.ok:
        click.echo(f"Audit chain intact: {result.verified} event(s) verified, up to row "
                   f"#{result.through_id or 0}{unsealed}.")
        return
    click.echo(f"Audit chain broken: {result.problem}", err=True)
    click.echo(f"{result.verified} event(s) verified before the break{unsealed}.", err=True)
    sys.exit(1)


@click.command("audit-reseal")
@with_appcontext
def audit_reseal_command() -> None:
    """Redo the audit chain's MACs under the current key, after `vault rotate-key`.

    Each link is verified under its old key first; at a broken one it stops, exit 1. Run it
    before removing the old secret from ENCRYPTION_SECRET_PREVIOUS. Resumable.
    """
    try:
        resealed = reseal()
    except ChainBroken as broken:
        click.echo(f"Stopped, nothing from the break on resealed: {broken.problem}", err=True)
        sys.exit(1)
    click.echo(f"Resealed {resealed} audit link(s) under the current key.")


@click.command("audit-retention")
@with_appcontext
def audit_retention_command() -> None:
    """Delete sealed audit events older than VAULT_AUDIT_RETENTION_DAYS, in small batches."""
    days = current_app.config["VAULT_AUDIT_RETENTION_DAYS"]
    try:
        deleted = apply_retention(utcnow(), days)
    except ChainBroken as broken:
        click.echo(f"Stopped, nothing from the break on deleted: {broken.problem}", err=True)
        sys.exit(1)
    click.echo(f"Deleted {deleted} sealed audit event(s) older than {days} day(s).")


COMMANDS = [audit_export_command, audit_seal_command, audit_verify_command,
            audit_reseal_command, audit_retention_command]
