"""Token Vault: a dashboard and service that keeps a company's OAuth tokens and API keys."""

from __future__ import annotations

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
        register_logging(app)
        register_extensions(app)
        check_encryption_secret(app)
    except ConfigError as error:
        raise SystemExit(f"Token Vault cannot start: {error}") from None
    register_oauth(app)
    register_observability(app)
    register_security(app)
    register_refresh(app)
    register_alerts(app)
    register_blueprints(app)
    register_commands(app)
    return app


def register_providers(app: Flask, overrides: Mapping[str, Any] | None) -> None:
    """Load the providers file named by ``VAULT_PROVIDERS_FILE``."""
    from vault.providers.registry import ProviderRegistry

    environ = read_environment(app.instance_path, PROJECT_ROOT)
    app.extensions["providers"] = ProviderRegistry.from_file(
        app.config["VAULT_PROVIDERS_FILE"],
        required=app.config["VAULT_PROVIDERS_FILE_REQUIRED"],
        environ=environ,
    )


def register_logging(app: Flask) -> None:
    """Scrub credentials from every log record, whichever logger or handler it goes through;
    one handler writes each line, as text or JSON (``VAULT_LOG_FORMAT``), with its request id."""
    from flask.logging import default_handler

    from vault.observability.logs import install_logging
    from vault.redact import install_log_redaction

    install_logging(app.config["VAULT_LOG_FORMAT"])
    install_log_redaction()  # after: its factory must stay the outermost
    app.logger.removeHandler(default_handler)  # its lines reach the root logger's handler


def register_extensions(app: Flask) -> None:
    """Bind the extensions and services to this app."""
    from vault.database import configure_engine
    from vault.extensions import csrf, db, limiter, login_manager, migrate
    from vault.services import handout
    from vault.tokens.store import token_vault

    db.init_app(app)
    configure_engine(app)
    handout.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(PROJECT_ROOT, "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)
    limiter.init_app(app)
    token_vault.init_app(app)


def check_encryption_secret(app: Flask) -> None:
    """Refuse to start when the stored values were encrypted under other secrets."""
    from vault.extensions import db
    from vault.tokens.rotation import check_secret_matches_database

    try:
        check_secret_matches_database(app)
    except ConfigError:
        with app.app_context():
            db.engine.dispose()  # this app will never serve; close what the check opened
        raise


def register_oauth(app: Flask) -> None:
    """One Authlib client per OAuth provider, flow state kept server-side."""
    from vault.oauth.clients import init_oauth

    init_oauth(app)


def register_observability(app: Flask) -> None:
    """Request ids on every response, log line and audit row; Prometheus metrics.

    See docs/architecture.md, "Observability".
    """
    from vault.observability.metrics import init_metrics
    from vault.observability.request_ids import init_request_ids

    init_request_ids(app)
    init_metrics(app)


def register_security(app: Flask) -> None:
    """Sign-in required everywhere, CSRF and cross-site checks, hostile input refused,
    security headers, cookies, error pages (the outage page too).

    Before the blueprints: their ``<int:...>`` routes take the app's id converter.
    """
    from vault.web.security import init_security

    init_security(app)


def register_refresh(app: Flask) -> None:
    """The refresh engine behind ``token_vault.get_access_token``.

    See docs/architecture.md, "Refresh protocol".
    """
    from vault.refresh.engine import register_refresh as install

    install(app)


def register_alerts(app: Flask) -> None:
    """Alert channels from the settings, and the outbox's listener on connection changes.

    See docs/architecture.md, "Alerts".
    """
    from vault.alerts import init_alerts

    init_alerts(app)


def register_blueprints(app: Flask) -> None:
    """Mount the web blueprints."""
    from vault.web import (
        alerts,
        api,
        audit,
        auth,
        connect,
        connections,
        device,
        health,
        metrics,
        people,
        providers,
        reconnect,
        service_accounts,
        service_keys,
        users,
    )
    from vault.web.filters import init_filters

    app.register_blueprint(providers.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(connect.bp)
    app.register_blueprint(connections.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(reconnect.bp)
    app.register_blueprint(alerts.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(device.bp)
    app.register_blueprint(people.bp)
    app.register_blueprint(service_accounts.bp)
    app.register_blueprint(service_keys.bp)
    app.register_blueprint(users.bp)
    init_filters(app)


def register_commands(app: Flask) -> None:
    """Attach the ``flask`` command groups."""
    from vault.cli import register_commands as attach

    attach(app)
