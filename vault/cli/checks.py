"""``flask vault check-credentials`` and ``flask vault recompute-limits``.

``check-credentials`` proves now that each stored credential still works (see
:mod:`vault.services.checks`); ``recompute-limits`` brings every connection's reconnect-by
date up to date with the providers file (after an upgrade, or a changed rule).
"""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import with_appcontext

from vault.models import utcnow
from vault.services.checks import CheckResult, check_credentials
from vault.services.connections import recompute_reconnect_by


@click.command("check-credentials")
@click.option("--provider", "provider_key", default=None,
              help="Only this provider's connections (its key in the providers file).")
@click.option("--json", "as_json", is_flag=True, help="Print each result as JSON.")
@click.pass_context
@with_appcontext
def check_credentials_command(ctx: click.Context, provider_key: str | None, as_json: bool) -> None:
    """Check every active connection's credential now with a cheap read-only request.

    A credential the provider refuses (401/403) marks its connection "needs reconnect".
    Exits 1 when any check was refused or failed (provider down, rate-limited, timed out).
    """
    if provider_key is not None and provider_key not in current_app.extensions["providers"]:
        raise click.BadParameter(f"{provider_key} is not in the providers file",
                                 param_hint="--provider")
    outcomes = check_credentials(provider_key, actor="cli")
    counts = {result: 0 for result in CheckResult}
    for outcome in outcomes:
        counts[outcome.result] += 1
    if as_json:
        click.echo(json.dumps({
            "checked": len(outcomes),
            **{result.value: number for result, number in counts.items()},
            "results": [outcome.as_dict() for outcome in outcomes],
        }, indent=2))
    else:
        for outcome in outcomes:
            if outcome.failed:
                click.echo(f"connection {outcome.connection_id} ({outcome.provider}): "
                           f"{outcome.result.value}: {outcome.message}", err=True)
        summary = ", ".join(f"{number} {result.value}" for result, number in counts.items()
                            if number)
        click.echo(f"Checked {len(outcomes)} connection{'' if len(outcomes) == 1 else 's'}"
                   + (f": {summary}." if summary else "."))
    ctx.exit(1 if any(outcome.failed for outcome in outcomes) else 0)


@click.command("recompute-limits")
@with_appcontext
def recompute_limits_command() -> None:
    """Recompute every connection's "reconnect by" date from the providers file's rules."""
    changed = recompute_reconnect_by(utcnow())
    click.echo(f"Reconnect-by dates recomputed: {changed} changed.")


COMMANDS = [check_credentials_command, recompute_limits_command]
