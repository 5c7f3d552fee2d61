"""The ``flask`` command groups, attached to an app by :func:`register_commands`.

Each module defines plain commands and lists them in ``COMMANDS``; nothing is attached to
anything when a module is imported.
"""

from __future__ import annotations

from collections.abc import Iterable

import click
from flask import Flask
from flask.cli import AppGroup


def register_commands(app: Flask) -> None:
    """Attach ``flask users``, ``flask vault`` and ``flask service-keys`` to ``app``."""
    from vault.cli import audit, checks, demo, keys, refresh, service_keys, users, worker

    app.cli.add_command(_group("users", "Manage staff accounts.", users.COMMANDS))
    app.cli.add_command(
        _group(
            "vault",
            "Operate on the encrypted vault.",
            [*keys.COMMANDS, *refresh.COMMANDS, *checks.COMMANDS, *worker.COMMANDS,
             *demo.COMMANDS, *audit.COMMANDS],
        )
    )
    app.cli.add_command(
        _group("service-keys", "Manage API keys for integrations.", service_keys.COMMANDS)
    )


def _group(name: str, help_text: str, commands: Iterable[click.Command]) -> AppGroup:
    group = AppGroup(name, help=help_text)
    for command in commands:
        group.add_command(command)
    return group
