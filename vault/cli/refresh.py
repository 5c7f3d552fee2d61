"""``flask vault refresh-due``: refresh every token that expires soon (cron, timers, CronJobs).

Importing this module attaches the command to the ``vault`` group of :mod:`vault.cli.users`.
"""

from __future__ import annotations

import json
import sys

import click
from flask.cli import with_appcontext

from vault.config import MAX_REFRESH_CONCURRENCY
from vault.refresh.batch import count_due, refresh_due
from vault.refresh.engine import RefreshResult


@click.command("refresh-due")
@click.option(
    "--within",
    type=click.IntRange(min=0),
    default=None,
    help="Refresh tokens expiring within this many seconds "
    "[default: VAULT_REFRESH_BUFFER_SECONDS].",
)
@click.option(
    "--concurrency", type=click.IntRange(1, MAX_REFRESH_CONCURRENCY), default=4,
    show_default=True,
    help="Connections refreshed in parallel (PostgreSQL; SQLite refreshes one at a time).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
@with_appcontext
def refresh_due_command(
    ctx: click.Context, within: int | None, concurrency: int, as_json: bool
) -> None:
    """Refresh every token expiring soon; safe to run from cron on several hosts at once.

    Exits 0 when every due connection was refreshed (or needed nothing), 1 when any failed
    or needs reconnecting.
    """
    if not as_json and sys.stdout.isatty():
        with click.progressbar(length=count_due(within), label="Refreshing") as bar:

            def advance(_result: RefreshResult) -> None:
                bar.update(1)

            summary = refresh_due(within, concurrency, progress=advance)
    else:
        summary = refresh_due(within, concurrency)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        for problem in summary.problems:
            click.echo(f"connection {problem.connection_id}: {problem.outcome.value}: "
                       f"{problem.message}", err=True)
        click.echo(summary.line())
    ctx.exit(0 if summary.ok else 1)


COMMANDS = [refresh_due_command]
