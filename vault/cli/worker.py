"""``flask vault worker``: refresh due tokens and run the other jobs every interval.

The long-running process of a deployment (systemd, a Kubernetes Deployment, ``make run``),
in place of or beside ``vault refresh-due`` from cron. Importing this module attaches nothing.
"""

from __future__ import annotations

import signal
from types import FrameType

import click
from flask import current_app
from flask.cli import with_appcontext

from vault.tokens.store import token_vault
from vault.worker.runner import Worker


@click.command("worker")
@click.option(
    "--interval",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds between cycles, with jitter [default: VAULT_WORKER_INTERVAL_SECONDS].",
)
@click.option("--once", is_flag=True, help="Run one cycle and exit.")
@click.pass_context
@with_appcontext
def worker_command(ctx: click.Context, interval: int | None, once: bool) -> None:
    """Run the vault's jobs (refresh-due first) every interval until SIGTERM or Ctrl-C.

    Any number of workers may run on any number of hosts. SIGTERM or SIGINT lets the
    current connection's refresh finish, then exits 0; a second one exits at once. With
    --once: exits 0 when every job went well, 1 when a refresh or a delivery failed.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    worker = Worker(
        app,
        interval_seconds=interval or app.config["VAULT_WORKER_INTERVAL_SECONDS"],
        on_cycle=lambda report: click.echo(
            f"{token_vault.clock():%Y-%m-%d %H:%M:%S} worker: {report.line()}", err=True
        ),
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if worker.stopping:
            raise SystemExit(128 + signum)  # asked twice: stop now
        click.echo(f"Worker stopping after the current item ({signal.Signals(signum).name}).",
                   err=True)
        worker.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    click.echo(
        f"Worker {worker.worker_id} started: "
        + ("one cycle" if once else f"every {worker.interval_seconds} s"),
        err=True,
    )
    try:
        ok = worker.run(once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not once:
        click.echo(f"Worker {worker.worker_id} stopped.", err=True)
    ctx.exit(0 if ok or not once else 1)


COMMANDS = [worker_command]
