"""``flask vault seed-demo --connections N``: fake connections for demos and benchmarks.

Fake tokens are encrypted like real ones (the app's :class:`~vault.crypto.TokenCipher`, AAD
``connection:<id>:<kind>``, the current key id) and written in bulk (COPY on PostgreSQL,
executemany on SQLite), so 10,000 connections take seconds. The spread of statuses and
expiries is what a real vault shows:
mostly active, some expiring soon, some expired but refreshable, some needing a reconnect,
some failing, some disconnected.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import cast

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import Table, insert, select, text

from vault.cli.demo_providers import BUILT_IN_PROVIDERS, DemoKind, provider_kinds
from vault.extensions import db
from vault.grants import StoredValues
from vault.grants.limits import reconnect_deadline
from vault.models import AuditEvent, Connection, Role, Token, User, token_aad, utcnow
from vault.tokens.store import token_vault

__all__ = ["BUILT_IN_PROVIDERS", "COMMANDS", "SeedReport", "seed_demo"]

CHUNK = 2000
FIRST_NAMES = ("Noa", "Avi", "Dana", "Omer", "Maya", "Yossi", "Tamar", "Eitan", "Lior", "Shira",
               "Ada", "Grace", "Alan", "Linus", "Ken", "Barbara", "Edsger", "Frances")
LAST_NAMES = ("Levi", "Cohen", "Mizrahi", "Peretz", "Biton", "Friedman", "Lovelace", "Hopper",
              "Turing", "Torvalds", "Thompson", "Liskov", "Dijkstra", "Allen")
REJECTED = (
    "invalid_grant: Token has been expired or revoked.",
    "invalid_grant: The user revoked access to the application.",
    "invalid_grant: AADSTS70008: The refresh token has expired due to inactivity.",
)
KEY_REJECTED = "the provider refused the API key (HTTP 401)"
FAILURES = (
    "the token endpoint answered 503 Service Unavailable",
    "the token endpoint answered 429 Too Many Requests; retry after 120 s",
    "timed out after 10 s waiting for the token endpoint",
    "could not connect to the token endpoint (connection refused)",
    "the token endpoint answered 500 Internal Server Error",
)


@dataclass
class SeedReport:
    """What :func:`seed_demo` created."""

    connections: int = 0
    tokens: int = 0
    audit_events: int = 0
    providers: list[str] = field(default_factory=list)
    built_in: bool = False
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def seed_demo(count: int, *, seed: int | None = None, now: datetime | None = None) -> SeedReport:
    """Add ``count`` demo connections with encrypted fake tokens and audit events; commit.

    Spread over the configured providers, or over :data:`BUILT_IN_PROVIDERS` when none is
    configured. Each run adds connections whose subjects carry a fresh run id
    (``demo-<run>-<n>``), so running it again never collides with earlier runs.
    """
    started = time.perf_counter()
    rng = random.Random(seed)
    now = now or utcnow()
    registry = current_app.extensions["providers"]
    kinds = provider_kinds(registry, now)
    report = SeedReport(providers=[kind.key for kind in kinds], built_in=len(registry) == 0)
    run = secrets.token_hex(3)
    admin = db.session.scalar(
        select(User).where(User.role == Role.ADMIN.value).order_by(User.id).limit(1)
    )
    builder = _Builder(rng, now, admin)
    for first in range(0, count, CHUNK):
        plans = [builder.plan(rng.choice(kinds), run, n)
                 for n in range(first, min(count, first + CHUNK))]
        ids = _insert_connections([plan.connection for plan in plans])
        tokens, events = [], []
        for connection_id, plan in zip(ids, plans, strict=True):
            tokens += builder.tokens(connection_id, plan)
            events += builder.events(connection_id, plan)
            report.statuses[plan.connection["status"]] += 1
        _insert(Token.__table__, tokens)
        _insert(AuditEvent.__table__, events)
        report.connections += len(ids)
        report.tokens += len(tokens)
        report.audit_events += len(events)
    db.session.add(AuditEvent(
        actor="cli", action="demo.seeded", outcome="success",
        detail=f"{report.connections} demo connections (run {run})",
    ))
    db.session.commit()
    report.audit_events += 1
    report.seconds = time.perf_counter() - started
    return report


def _postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def _insert_connections(rows: list[dict]) -> list[int]:
    """Insert connection rows; their new ids, in order."""
    table = cast(Table, Connection.__table__)
    if not _postgresql():
        statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return list(db.session.scalars(statement, rows))
    # Take the ids from the sequence first, so the rows can go in by COPY.
    ids = list(db.session.scalars(
        text("SELECT nextval(pg_get_serial_sequence('connections', 'id')) "
             "FROM generate_series(1, :n)"),
        {"n": len(rows)},
    ))
    _insert(table, [{"id": id_, **row} for id_, row in zip(ids, rows, strict=True)])
    return ids


def _insert(table, rows: list[dict]) -> None:
    """Bulk-insert ``rows`` in the session's transaction: COPY on PostgreSQL (many times
    faster than INSERTs for tens of thousands of rows), executemany elsewhere."""
    if not rows:
        return
    if not _postgresql():
        db.session.execute(insert(table), rows)
        return
    columns = list(rows[0])
    driver = db.session.connection().connection.driver_connection
    assert driver is not None  # a live psycopg connection
    with driver.cursor() as cursor:
        names = ", ".join(f'"{column}"' for column in columns)
        with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row([row[column] for column in columns])


@dataclass
class _Plan:
    kind: DemoKind
    connection: dict
    access_expires: datetime | None = None
    refresh_expires: datetime | None = None
    has_refresh: bool = True
    valid: bool = True
    values: dict = field(default_factory=dict)  # kind -> (fake value, expiry)


class _Builder:
    """Draws one connection's state, then its token rows and audit events."""

    def __init__(self, rng: random.Random, now: datetime, admin: User | None):
        self.rng, self.now = rng, now
        self.admin_id = admin.id if admin is not None else None
        self.actor = admin.email if admin is not None else "seed-demo"
        self.cipher = token_vault.cipher
        self.key_id = self.cipher.current_key_id

    def _ago(self, low: float, high: float) -> datetime:
        return self.now - timedelta(seconds=self.rng.uniform(low, high))

    def _ahead(self, low: float, high: float) -> datetime:
        return self.now + timedelta(seconds=self.rng.uniform(low, high))

    def _access_expiry(self) -> datetime | None:
        draw = self.rng.random()
        if draw < 0.10:
            return self._ago(60, 3 * 86400)  # expired: refresh-due has not got to it
        if draw < 0.20:
            return self._ahead(0, 600)
        if draw < 0.45:
            return self._ahead(600, 3600)
        if draw < 0.70:
            return self._ahead(3600, 86400)
        if draw < 0.98:
            return self._ahead(86400, 7 * 86400)
        return None  # the provider did not say

    def plan(self, kind: DemoKind, run: str, n: int) -> _Plan:
        """One connection row (not yet inserted) and what its tokens will look like."""
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        draw = rng.random()
        status, failures, error, next_refresh = "active", 0, None, None
        renews = kind.oauth or kind.exchange  # only these ever call a token endpoint
        if draw < 0.06:
            status = "disconnected"
        elif draw < 0.14:
            status = "needs_reconnect"
            error = rng.choice(REJECTED) if kind.oauth else KEY_REJECTED
        elif draw < 0.17 and renews:
            status, failures, error = "error", rng.randint(3, 9), rng.choice(FAILURES)
            next_refresh = self._ahead(300, 3600)
        elif draw < 0.22 and renews:
            failures, error = rng.randint(1, 4), rng.choice(FAILURES)
            next_refresh = self._ahead(30, 1800)
        created = self._ago(86400, 400 * 86400)
        refreshed = None if status == "disconnected" else self._ago(0, 3 * 3600)
        account: dict[str, str | None]
        if kind.oauth:
            email = f"{first}.{last}.{n}@{kind.key}.example".lower()
            account = {"account_email": email, "account_name": f"{first} {last}"}
        else:
            account = {"account_email": None, "account_name": f"{kind.title} line {n}"}
        granted = kind.scope
        if kind.scope and rng.random() < 0.05:
            granted = " ".join(kind.scope.split()[:-1])
        row = {
            "provider": kind.key, "account_subject": f"demo-{run}-{n:06d}", **account,
            "scopes_requested": kind.scope, "scopes_granted": granted, "status": status,
            "created_by_id": self.admin_id, "created_at": created,
            "updated_at": refreshed or created,
            "last_refreshed_at": refreshed, "next_refresh_at": next_refresh,
            "failure_count": failures, "last_error": error,
        }
        plan = _Plan(kind, row, valid=status != "needs_reconnect")
        if kind.oauth or kind.exchange:
            plan.access_expires = self._access_expiry()
            if status == "needs_reconnect":
                plan.access_expires = self._ago(60, 5 * 86400)
        elif kind.key_expires and rng.random() < 0.6:
            plan.access_expires = self._ahead(-5 * 86400, 60 * 86400)
        if kind.oauth and not (kind.provider and kind.provider.uses_client_credentials):
            plan.has_refresh = rng.random() < 0.95
            if rng.random() < 0.3:
                plan.refresh_expires = self._ahead(-2 * 86400, 90 * 86400)
        elif kind.oauth:
            plan.has_refresh = False
        self._deadline(plan, created)
        return plan

    def _deadline(self, plan: _Plan, created: datetime) -> None:
        """Consent time and the reconnect-by date the vault's own rules give the plan."""
        row, provider = plan.connection, plan.kind.provider
        consented = created
        if provider is not None and provider.publishing_status == "testing":
            # Reconnected within the last week, as people of a Testing app must.
            consented = self._ago(3600, 6.9 * 86400)
        row["consented_at"] = consented
        plan.values = self._values(plan) if row["status"] != "disconnected" else {}
        rows = [SimpleNamespace(kind=kind, is_valid=plan.valid, expires_at=expires)
                for kind, (_value, expires) in plan.values.items()]
        times = SimpleNamespace(status=row["status"], consented_at=consented,
                                created_at=created, last_refreshed_at=row["last_refreshed_at"],
                                # A refused grant stopped it when it was refused.
                                reconnect_by=row["updated_at"])
        deadline = reconnect_deadline(plan.kind.key, provider, times, StoredValues.of(rows),
                                      self.now)
        row["reconnect_by"], row["reconnect_reason"] = deadline.at, deadline.reason

    def _values(self, plan: _Plan) -> dict:
        kind = plan.kind
        if kind.oauth:
            values = {"access": (f"ya29.demo-{secrets.token_urlsafe(48)}", plan.access_expires)}
            if plan.has_refresh:
                values["refresh"] = (f"1//demo-{secrets.token_urlsafe(40)}", plan.refresh_expires)
            if kind.oidc:
                values["id"] = (f"eyJhbGciOiJSUzI1NiJ9.demo.{secrets.token_urlsafe(64)}", None)
        else:
            key_expiry = None if kind.exchange else plan.access_expires
            values = {"api_key": (f"demo-key-{secrets.token_urlsafe(24)}", key_expiry)}
            if kind.exchange:
                values["api_secret"] = (f"demo-secret-{secrets.token_urlsafe(24)}", None)
                values["access"] = (f"eyJ0eXAiOiJKV1QifQ.demo.{secrets.token_urlsafe(32)}",
                                    plan.access_expires)
        return values

    def tokens(self, connection_id: int, plan: _Plan) -> list[dict]:
        """Encrypted fake token rows for one inserted connection (none once disconnected)."""
        if plan.connection["status"] == "disconnected":
            return []
        values = plan.values
        refreshed = plan.connection["last_refreshed_at"]
        return [
            {
                "connection_id": connection_id, "kind": token_kind,
                "ciphertext": self.cipher.encrypt(
                    value, aad=token_aad(connection_id, token_kind)
                ),
                "key_id": self.key_id, "expires_at": expires, "is_valid": plan.valid,
                "last_refreshed_at": refreshed, "created_at": plan.connection["created_at"],
                "updated_at": refreshed or plan.connection["created_at"],
            }
            for token_kind, (value, expires) in values.items()
        ]

    def events(self, connection_id: int, plan: _Plan) -> list[dict]:
        """The audit trail such a connection would have left."""
        row, kind = plan.connection, plan.kind
        target = f"{kind.key}:{row['account_email'] or row['account_name']}"

        def event(action, at, actor="system", outcome="success", detail=None):
            return {"occurred_at": at, "actor": actor, "action": action, "target": target,
                    "connection_id": connection_id, "outcome": outcome, "detail": detail,
                    "actor_user_id": self.admin_id if actor == self.actor else None}

        created = "connection.created" if kind.oauth else "credentials.added"
        events = [event(created, row["created_at"], self.actor, detail="demo data")]
        if row["last_refreshed_at"] and (kind.oauth or kind.exchange):
            events.append(event("token.refreshed", row["last_refreshed_at"]))
        if row["status"] == "needs_reconnect":
            events.append(event("token.refresh_failed", row["updated_at"], outcome="failure",
                                detail=f"needs reconnect: {row['last_error']}"))
        elif row["failure_count"]:
            events.append(event("token.refresh_failed", row["updated_at"], outcome="failure",
                                detail=row["last_error"]))
        if row["status"] == "disconnected":
            events.append(event("connection.disconnected", self._ago(0, 30 * 86400), self.actor,
                                detail="revoked=yes; tokens deleted=2"))
        return events


@click.command("seed-demo")
@click.option("--connections", "count", type=click.IntRange(1, 1_000_000), default=200,
              show_default=True, help="How many fake connections to add.")
@click.option("--seed", type=int, default=None,
              help="Random seed, for the same spread of statuses and expiries every time.")
@with_appcontext
def seed_demo_command(count: int, seed: int | None) -> None:
    """Fill the database with fake connections and encrypted fake tokens (demos, benchmarks).

    Connections are spread over the configured providers, or over google, microsoft,
    voicenter, greeninvoice, whatsapp, github, slack, a Google app in Testing and a
    client-credentials partner when none is configured; each gets the reconnect-by date
    its provider's rules give it. Running it again ADDS
    another N: every run's account subjects carry their own run id (demo-<run>-<n>), so runs
    never collide. The fake tokens are useless at any provider; do not run this on a vault
    that holds real credentials.
    """
    report = seed_demo(count, seed=seed)
    if report.built_in:
        click.echo(f"No providers are configured ({current_app.config['VAULT_PROVIDERS_FILE']}); "
                   f"using the built-in provider keys {', '.join(report.providers)}.")
    spread = ", ".join(f"{n:,} {status}" for status, n in report.statuses.most_common())
    click.echo(f"Created {report.connections:,} demo connections ({spread}) across "
               f"{', '.join(report.providers)}: {report.tokens:,} encrypted values, "
               f"{report.audit_events:,} audit events, in {report.seconds:.1f} s.")


COMMANDS = [seed_demo_command]
