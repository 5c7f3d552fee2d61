"""Token Vault: a dashboard and service that keeps a company's OAuth tokens and API keys."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from vault.config import ConfigError, load_config, read_environment

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application; ``config`` overrides the environment (tests pass theirs here).

    A configuration that cannot work stops start-up with one line naming the problem.
    """
    app = Flask(
        __name__,
        instance_path=os.path.join(PROJECT_ROOT, "instance"),
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
    )
    try:
        app.config.update(load_config(app.instance_path, PROJECT_ROOT, config))
        register_providers(app, config)
    except ConfigError as error:
        raise SystemExit(f"Token Vault cannot start: {error}") from None
    register_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_commands(app)
    return app


def register_providers(app: Flask, overrides: Mapping[str, Any] | None) -> None:
    """Load the providers file named by ``VAULT_PROVIDERS_FILE``."""
    from vault.providers import ProviderRegistry

    environ = read_environment(app.instance_path, PROJECT_ROOT)
    app.extensions["providers"] = ProviderRegistry.from_file(
        app.config["VAULT_PROVIDERS_FILE"],
        required=app.config["VAULT_PROVIDERS_FILE_REQUIRED"],
        environ=environ,
    )


def register_logging(app: Flask) -> None:
    """Scrub credentials from every log record that passes through the root handlers."""
    from vault.redact import RedactingFilter

    redacting = RedactingFilter()
    for handler in logging.getLogger().handlers + app.logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)


def register_extensions(app: Flask) -> None:
    """Bind the extensions and services to this app."""
    from vault.database import configure_engine
    from vault.extensions import csrf, db, limiter, login_manager, migrate
    from vault.store import token_vault

    db.init_app(app)
    configure_engine(app)
    migrate.init_app(app, db, directory=os.path.join(PROJECT_ROOT, "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)
    limiter.init_app(app)
    token_vault.init_app(app)


def register_blueprints(app: Flask) -> None:
    """Mount the web blueprints."""
    from vault.web import main

    app.register_blueprint(main.bp)


def register_commands(app: Flask) -> None:
    """Attach the ``flask`` command groups."""
    from vault.cli import register_commands as attach

    attach(app)
