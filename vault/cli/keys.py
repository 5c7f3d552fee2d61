"""``flask vault rotate-key`` and ``flask vault verify``."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext
from sqlalchemy import func, select

from vault.extensions import db
from vault.models import Token
from vault.tokens.device_grants import (
    count_device_grant_values,
    count_outdated_device_grants,
    rotate_device_grants,
    verify_device_grants,
)
from vault.tokens.rotation import DEFAULT_BATCH_SIZE, count_outdated, rotate, verify
from vault.tokens.store import token_vault


@click.command("rotate-key")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=DEFAULT_BATCH_SIZE,
              show_default=True, help="Values re-encrypted per transaction.")
@with_appcontext
def rotate_key_command(batch_size: int) -> None:
    """Re-encrypt every stored value under the current ENCRYPTION_SECRET.

    Put the new secret in ENCRYPTION_SECRET and the old one in ENCRYPTION_SECRET_PREVIOUS
    first. Interrupt and rerun at will: values already under the current key are skipped.
    """
    outdated = count_outdated()
    current = token_vault.cipher.current_key_id
    if outdated == 0 and count_outdated_device_grants() == 0:
        click.echo(f"Every stored value is already under key {current}.")
        return
    # Pending device grants' codes (vault/tokens/device_grants.py): few, so one pass.
    pending = rotate_device_grants()
    if pending.reencrypted or pending.undecryptable:
        click.echo(f"Re-encrypted {pending.reencrypted} pending device grant(s) under key "
                   f"{current}.")
    for grant_id in pending.undecryptable:
        click.echo(f"undecryptable: device grant {grant_id}", err=True)
    with click.progressbar(length=outdated, label=f"Re-encrypting under key {current}",
                           file=sys.stderr) as bar:
        result = rotate(batch_size=batch_size, progress=bar.update)
    click.echo(f"Re-encrypted {result.reencrypted} value(s) under key {current}.")
    if result.undecryptable or pending.undecryptable:
        broken = len(result.undecryptable) + len(pending.undecryptable)
        click.echo(f"{broken} value(s) could not be decrypted and were left "
                   "as they are; run `vault verify` for the list.", err=True)
        sys.exit(1)


@click.command("verify")
@with_appcontext
def verify_command() -> None:
    """Decrypt every stored value and report the ones that fail. Changes nothing."""
    total = db.session.scalar(select(func.count(Token.id))) or 0
    failures = []
    with click.progressbar(verify(), length=total, label="Verifying", file=sys.stderr) as results:
        for failure in results:
            if failure is not None:
                failures.append(failure)
    for failure in failures:
        click.echo(f"undecryptable: connection {failure.connection_id} {failure.kind} "
                   f"(token {failure.token_id}, key id {failure.key_id})")
    # Pending device grants' codes, after the tokens (vault/tokens/device_grants.py).
    total += count_device_grant_values()
    broken = len(failures)
    for grant_id in verify_device_grants():
        if grant_id is not None:
            broken += 1
            click.echo(f"undecryptable: device grant {grant_id}")
    click.echo(f"Checked {total} value(s): {total - broken} decrypt, "
               f"{broken} undecryptable.")
    if broken:
        sys.exit(1)


COMMANDS = [rotate_key_command, verify_command]
