"""Database models (SQLAlchemy 2 typed declarative).

Every timestamp is a timezone-aware UTC ``datetime``; no column anywhere holds a plaintext
secret (tokens live in ``tokens.ciphertext``, service keys and passwords only as hashes).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry, relationship


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores no zone; PostgreSQL does)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    # One registry carrying both, since Flask-SQLAlchemy subclasses this base.
    registry = registry(
        metadata=MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime()},
    )


class Role(str, enum.Enum):
    ADMIN = "admin"
    VIEWER = "viewer"


def token_aad(connection_id: int, kind: str) -> bytes:
    """Associated data binding a stored value to its connection and token kind."""
    return f"connection:{connection_id}:{kind}".encode()


class ConnectionStatus(str, enum.Enum):
    ACTIVE = "active"
    NEEDS_RECONNECT = "needs_reconnect"
    ERROR = "error"
    DISCONNECTED = "disconnected"


class TokenKind(str, enum.Enum):
    ACCESS = "access"
    REFRESH = "refresh"
    ID = "id"
    API_KEY = "api_key"
    API_SECRET = "api_secret"
    # A service account's JSON key file (and the subject it impersonates): signs the JWT
    # bearer grant's assertions (vault/oauth/service_accounts.py).
    PRIVATE_KEY = "private_key"


def _one_of(column: str, enum_type: type[enum.Enum]) -> str:
    values = ", ".join(f"'{member.value}'" for member in enum_type)
    return f"{column} IN ({values})"


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class User(UserMixin, TimestampMixin, Base):
    """A member of staff who signs in to the dashboard (Flask-Login's user, too)."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_one_of("role", Role), name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=Role.VIEWER.value)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(default=True)
    must_change_password: Mapped[bool] = mapped_column(default=False)
    last_login_at: Mapped[datetime | None]
    # Moved on when the user signs out: every session cookie issued before, copies included,
    # stops working (see accounts.session_marker).
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN.value

    @property
    def is_active(self) -> bool:
        """Flask-Login: a disabled user cannot sign in and is signed out at once."""
        return self.enabled

    def __repr__(self) -> str:
        return f"<User {self.id} {self.email} {self.role}>"


class Connection(TimestampMixin, Base):
    """One connected account at one provider."""

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("provider", "account_subject"),
        CheckConstraint(_one_of("status", ConnectionStatus), name="status"),
        Index(None, "status", "next_refresh_at"),
        Index(None, "provider", "status"),
        # The connections list pages through these (soonest expiry first, the default), and
        # the pages' time split of the counts is one range of the second.
        Index(None, "expires_at", "id"),
        Index(None, "status", "failure_count", "expires_at"),
        Index(None, "status", "updated_at"),  # the health page's latest needs-reconnect
        # Search by the start of an e-mail, name or subject, whatever the case (PostgreSQL;
        # SQLite scans).
        *(
            # postgresql_ops names an expression by its label: keyed by the expression's
            # text, the operator class was silently left out, and LIKE 'prefix%' cannot use
            # a plain index unless the collation is C (migration 0016 writes the same).
            # The column itself and the id ride along (INCLUDE), so a search's capped total
            # is counted from the index alone, without a visit to each matching row.
            Index(f"ix_connections_lower_{column}",
                  func.lower(literal_column(column)).label(f"lower_{column}"),
                  postgresql_ops={f"lower_{column}": "text_pattern_ops"},
                  postgresql_include=[column, "id"]).ddl_if(dialect="postgresql")
            for column in ("account_email", "account_name", "account_subject")
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    account_subject: Mapped[str] = mapped_column(String(255))
    account_email: Mapped[str | None] = mapped_column(String(320), index=True)
    account_name: Mapped[str | None] = mapped_column(String(255))
    scopes_requested: Mapped[str] = mapped_column(Text, default="")
    scopes_granted: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default=ConnectionStatus.ACTIVE.value)
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    last_refreshed_at: Mapped[datetime | None]
    next_refresh_at: Mapped[datetime | None]
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # When the current run of transient refresh failures began (set with the first failure,
    # cleared with failure_count): the alert rule `connection.refresh_failing` reads it.
    failing_since: Mapped[datetime | None]
    # When a person last granted access (connect, reconnect, pasted credentials): rules that
    # count from consent start here (vault/grants/limits.py).
    consented_at: Mapped[datetime | None]
    # The moment the connection stops working unless a person acts, and why in words;
    # recomputed by vault.grants.limits.apply_reconnect_deadline whenever tokens change.
    reconnect_by: Mapped[datetime | None] = mapped_column(index=True)
    reconnect_reason: Mapped[str | None] = mapped_column(Text)
    # The last credential check (vault/services/checks.py): when, how it ended (a
    # CheckResult value) and what the provider said, scrubbed. ``next_check_at`` is when the
    # worker checks again, and the claim that keeps two workers off the same connection.
    last_checked_at: Mapped[datetime | None]
    check_result: Mapped[str | None] = mapped_column(String(16))
    check_message: Mapped[str | None] = mapped_column(Text)
    check_failure_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_check_at: Mapped[datetime | None] = mapped_column(index=True)
    # Who answers for this connection (a staff user's or anyone's e-mail, lower-cased; the
    # person who connected it by default) and what it is for, in a sentence.
    owner_email: Mapped[str | None] = mapped_column(String(320), index=True)
    purpose: Mapped[str | None] = mapped_column(String(500))
    # The id of the private key a key-based credential signs with (a service account's
    # private_key_id, a jwt_bearer provider's key id): shown, never secret; its age is the
    # private_key token row's created_at.
    credential_key_id: Mapped[str | None] = mapped_column(String(128))
    # Copies of what the connection's token rows say, kept by database triggers on tokens
    # (vault/count_triggers.py, TOKEN_COPIES) and never written here, so the pages read
    # connections alone. The expiry the pages show: the access token's, else the API key's.
    expires_at: Mapped[datetime | None]
    # What the renewal check reads (vault.grants.StoredRows.copied): the refresh token's
    # validity (None without one) and expiry; whether an API key, an API secret and a
    # service account's private key are stored.
    refresh_token_valid: Mapped[bool | None]
    refresh_token_expires_at: Mapped[datetime | None]
    has_api_key: Mapped[bool] = mapped_column(server_default=false())
    has_api_secret: Mapped[bool] = mapped_column(server_default=false())
    has_private_key: Mapped[bool] = mapped_column(server_default=false())

    created_by: Mapped[User | None] = relationship()
    tokens: Mapped[list[Token]] = relationship(
        back_populates="connection", cascade="all, delete-orphan", passive_deletes=True
    )

    def aad(self, kind: str) -> bytes:
        """Associated data binding a stored value to this connection and token kind."""
        return token_aad(self.id, kind)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.provider}:{self.account_subject} {self.status}>"


class ConnectionTag(Base):
    """One short label on one connection (``billing``, ``calendar``); service keys can be
    restricted to tags."""

    __tablename__ = "connection_tags"
    # Listing a tag's connections (the filter, a tag-restricted key) reads this index alone.
    __table_args__ = (Index(None, "tag", "connection_id"),)

    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(32), primary_key=True)


class ConnectionConsumer(Base):
    """A service key that fetched a connection's access token, and when it last did.

    Kept up to date by the token API (at most once a minute per key and connection), so a
    connection's page and a key's page never scan the audit table to list consumers.
    """

    __tablename__ = "connection_consumers"
    __table_args__ = (Index(None, "service_key_id", "last_fetched_at"),)

    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    service_key_id: Mapped[int] = mapped_column(
        ForeignKey("service_keys.id", ondelete="CASCADE"), primary_key=True
    )
    first_fetched_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_fetched_at: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    """One encrypted value of one kind for one connection."""

    __tablename__ = "tokens"
    __table_args__ = (
        UniqueConstraint("connection_id", "kind"),
        CheckConstraint(_one_of("kind", TokenKind), name="kind"),
        Index(None, "kind", "expires_at"),
        # The dashboard joins each kind's expiry and validity to its connection; with every
        # column it reads in the index, PostgreSQL answers from the index alone.
        Index(None, "kind", "connection_id", "expires_at", "is_valid"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(8), index=True)
    expires_at: Mapped[datetime | None]
    is_valid: Mapped[bool] = mapped_column(default=True)
    last_refreshed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    connection: Mapped[Connection] = relationship(back_populates="tokens")

    def __repr__(self) -> str:  # never the ciphertext
        return f"<Token {self.id} connection={self.connection_id} kind={self.kind}>"


class ServiceKey(Base):
    """An API key an integration uses to fetch access tokens; only its hash is stored."""

    __tablename__ = "service_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    allowed_providers: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Empty: every connection of the allowed providers; else only connections carrying at
    # least one of these tags.
    allowed_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(320))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # The key stops working at this moment (None: never).
    expires_at: Mapped[datetime | None]
    # Rotation keeps the key (name, restrictions, consumers) and replaces its secret; the
    # previous secret keeps working until previous_key_expires_at (the overlap).
    rotated_at: Mapped[datetime | None]
    previous_key_prefix: Mapped[str | None] = mapped_column(String(16))
    previous_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    previous_key_expires_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"<ServiceKey {self.id} {self.name}>"


class AuditEvent(Base):
    """Who did what, to what, when, from where, and how it went. Never holds a secret."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index(None, "action", "occurred_at"),
        # The sealer's work list, kept small: only rows not yet in the chain.
        Index(
            "ix_audit_events_unsealed",
            "id",
            postgresql_where=text("chain_seq IS NULL"),
            sqlite_where=text("chain_seq IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(320))
    actor_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(320))
    # The connection's id, without a foreign key: events are records, written once and never
    # rewritten (connections are not deleted, only disconnected). A key would also make each
    # token hand-out lock the connection's row for its INSERT.
    connection_id: Mapped[int | None] = mapped_column(index=True)
    client_address: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[str | None] = mapped_column(Text)
    # The X-Request-ID of the request that wrote the row (vault.observability.request_ids),
    # to find its log lines; NULL for commands and background work. No index: the token
    # API's hot path writes a row per hand-out.
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The tamper-evident chain (vault/services/audit_chain.py): set when the sealer links the
    # row after its commit, so the hot path's INSERT never waits on the chain; chain_mac is
    # redone under a new key by `vault audit-reseal`. NULL while the row is unsealed; the
    # unique chain_seq also refuses a forked chain.
    chain_seq: Mapped[int | None] = mapped_column(unique=True)
    chain_mac: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    chain_key_id: Mapped[str | None] = mapped_column(String(8))

    def __repr__(self) -> str:
        return f"<AuditEvent {self.id} {self.action} {self.outcome}>"


class AuditChainState(Base):
    """The audit chain's one row: its head (the newest link's hash) and the last verification.

    Sealers and the retention job lock this row first, so only one extends the chain at a time.
    """

    __tablename__ = "audit_chain_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    head_seq: Mapped[int] = mapped_column(default=0)
    head_id: Mapped[int | None] = mapped_column()
    head_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    sealed_at: Mapped[datetime | None] = mapped_column()
    verified_at: Mapped[datetime | None] = mapped_column()
    verified_ok: Mapped[bool | None] = mapped_column()
    # How far the last verification got: the last good link, and the first broken one.
    verified_seq: Mapped[int | None] = mapped_column()
    verified_id: Mapped[int | None] = mapped_column()
    broken_id: Mapped[int | None] = mapped_column()
    problem: Mapped[str | None] = mapped_column(String(500))


class AuditChainCheckpoint(Base):
    """Where the audit chain resumes after retention deleted its oldest links.

    ``through_hash`` is the chain hash at the last deleted link; ``mac`` authenticates the
    checkpoint itself, so nobody without the secret can delete more rows and write a
    checkpoint to match.
    """

    __tablename__ = "audit_chain_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    through_seq: Mapped[int] = mapped_column(index=True)
    through_id: Mapped[int] = mapped_column()
    through_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    deleted: Mapped[int] = mapped_column()
    key_id: Mapped[str] = mapped_column(String(8))
    mac: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditHandoutCount(Base):
    """Token hand-outs of one service key and connection in one hour, while it runs.

    Only with VAULT_AUDIT_HANDOUTS=hourly: each hand-out adds one here (an upsert), and once
    the hour is over the sealer turns the row into one ``token.handed_out`` audit event.
    """

    __tablename__ = "audit_handout_counts"

    actor: Mapped[str] = mapped_column(String(320), primary_key=True)
    connection_id: Mapped[int] = mapped_column(primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    target: Mapped[str | None] = mapped_column(String(320))
    count: Mapped[int] = mapped_column(Integer)


class OAuthState(Base):
    """Server-side data of one OAuth flow in progress (PKCE verifier, nonce, redirect URI).

    Kept here rather than in the session cookie, encrypted, and consumed on first read, so a
    state can be used once only, on any instance.
    """

    __tablename__ = "oauth_states"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ThrottleCounter(Base):
    """One fixed-window counter of the database throttle (``vault/services/throttle.py``).

    Counted here rather than in process memory so that every worker and every instance sees
    the same count. ``key`` is a keyed hash of what is counted (an e-mail address, a client
    address, a device), never the thing itself; ``scope`` names the allowance, for operators.
    """

    __tablename__ = "throttle_counters"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(32))
    hits: Mapped[int] = mapped_column(Integer)
    window_ends_at: Mapped[datetime] = mapped_column(index=True)

    def __repr__(self) -> str:
        return f"<ThrottleCounter {self.scope} {self.hits} until {self.window_ends_at}>"


# -- Reconnect and connect links (issue 12) ---------------------------------------------------


class LinkKind(str, enum.Enum):
    RECONNECT = "reconnect"  # an existing connection's owner signs in again
    CONNECT = "connect"  # a person with an expected e-mail connects a new account


class AccessLink(Base):
    """A single-use bearer link that lets someone without a vault account run one OAuth flow.

    Only the token's SHA-256 hash is stored (like service keys'); the URL is shown once. A
    reconnect link names its connection; a connect link names a provider and the e-mail the
    account must have, and records the connection it produced once used.
    """

    __tablename__ = "reconnect_links"
    __table_args__ = (CheckConstraint(_one_of("kind", LinkKind), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    connection_id: Mapped[int | None] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    expected_email: Mapped[str | None] = mapped_column(String(320))
    # Who made it, as the audit names them ("alerts" for links in alerts); the user, if any.
    created_by: Mapped[str] = mapped_column(String(320))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(320))

    def __repr__(self) -> str:  # never the token's hash
        return f"<AccessLink {self.id} {self.kind} {self.provider}>"


# --- The worker (issue 12): heartbeats, scheduled jobs' claims, SQLite refresh leases ---


class WorkerHeartbeat(Base):
    """One running (or lately running) ``vault worker``: written after each of its cycles.

    ``/health`` reads the newest; rows of workers gone quiet for a day are pruned.
    """

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_cycle_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    interval_seconds: Mapped[int] = mapped_column(Integer)
    last_ok: Mapped[bool] = mapped_column(default=True)

    def __repr__(self) -> str:
        return f"<WorkerHeartbeat {self.worker_id} {self.last_cycle_at}>"


class WorkerJob(Base):
    """A scheduled worker job: claimed by one worker per period with a conditional UPDATE."""

    __tablename__ = "worker_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_started_at: Mapped[datetime | None]
    last_finished_at: Mapped[datetime | None]
    last_ok: Mapped[bool | None]
    last_summary: Mapped[str | None] = mapped_column(Text)
    last_worker_id: Mapped[str | None] = mapped_column(String(255))

    def __repr__(self) -> str:
        return f"<WorkerJob {self.name} next {self.next_run_at}>"


class RefreshLease(Base):
    """SQLite's stand-in for PostgreSQL's row lock during a refresh (vault/refresh/rows.py).

    A refresh claims its connection here in a short write transaction, calls the provider with
    no transaction open, and stores the answer only while ``claim`` is still its own; a crashed
    holder's lease lapses at ``expires_at``. Unused on PostgreSQL.
    """

    __tablename__ = "refresh_leases"

    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    claim: Mapped[str] = mapped_column(String(64))  # random, per refresh attempt
    expires_at: Mapped[datetime] = mapped_column()

    def __repr__(self) -> str:
        return f"<RefreshLease {self.connection_id} until {self.expires_at}>"


# -- Alerts (issue 12): the outbox, its deliveries per channel, and each attempt ------------


class DeliveryStatus(str, enum.Enum):
    PENDING = "pending"  # waiting for its next attempt (claimed by a worker while sending)
    DELIVERED = "delivered"
    ABANDONED = "abandoned"  # retried for the give-up period (alerts.delivery) without success


class Notification(Base):
    """One alert, written in the transaction of the state change that caused it (the outbox).

    ``dedupe_key`` is unique: the same state change, or the same rule firing again, never
    makes a second row. ``details`` is a snapshot for the message (provider, account, status,
    reason in plain words): never a token, key or secret. A reconnect link, a bearer
    credential, is kept only encrypted (AAD ``notification:<id>:reconnect_url``). An event
    about a provider rather than a connection has no ``connection_id``. ``digest_id`` names
    the digest that carries this alert to people when many connections broke at once.
    """

    __tablename__ = "notifications"
    __table_args__ = (Index(None, "dispatched_at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    provider: Mapped[str | None] = mapped_column(String(64))
    # No foreign key, like audit_events: a record, and no lock on the connection's row.
    connection_id: Mapped[int | None] = mapped_column(index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reconnect_url_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    digest_id: Mapped[int | None] = mapped_column(
        ForeignKey("notifications.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Set once by the worker that turned it into deliveries (a conditional UPDATE claims it).
    dispatched_at: Mapped[datetime | None]

    deliveries: Mapped[list[NotificationDelivery]] = relationship(
        back_populates="notification", cascade="all, delete-orphan", passive_deletes=True,
        order_by="NotificationDelivery.id",
    )

    def __repr__(self) -> str:  # never the reconnect link
        return f"<Notification {self.id} {self.event} {self.dedupe_key}>"


class NotificationDelivery(Base):
    """One notification to one channel: claimed by a worker, retried with back-off."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "channel"),
        CheckConstraint(_one_of("status", DeliveryStatus), name="status"),
        Index(None, "status", "next_attempt_at"),
        Index(None, "channel", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(16))  # email, webhook, slack
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The claim of the worker sending it right now, until claimed_until; a crashed worker's
    # claim lapses and another sends it.
    claim: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    notification: Mapped[Notification] = relationship(back_populates="deliveries")
    attempts_made: Mapped[list[DeliveryAttempt]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="DeliveryAttempt.id"
    )

    def __repr__(self) -> str:
        return f"<NotificationDelivery {self.id} {self.channel} {self.status}>"


class DeliveryAttempt(Base):
    """One try to send one delivery: when, how it went, the sanitised error."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index(None, "channel", "attempted_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("notification_deliveries.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    ok: Mapped[bool]
    error: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<DeliveryAttempt {self.id} {self.channel} ok={self.ok}>"


# -- The device authorization grant (issue 16, RFC 8628) ---------------------------------------


class DeviceGrantStatus(str, enum.Enum):
    PENDING = "pending"  # the person has not answered yet; the vault polls the provider
    APPROVED = "approved"  # tokens stored; ``connection_id`` names the connection
    DENIED = "denied"  # the person refused (access_denied)
    EXPIRED = "expired"  # the code ran out (expired_token) before anyone answered
    FAILED = "failed"  # the provider refused the grant otherwise, or its answer was unusable


def device_grant_aad(grant_id: int) -> bytes:
    """Associated data binding a pending device grant's codes to its row."""
    return f"device-grant:{grant_id}".encode()


class DeviceGrant(Base):
    """A device authorization grant in progress (RFC 8628) and how it ended.

    ``ciphertext`` holds the device code, the user code and the complete verification URL,
    encrypted (AAD ``device-grant:<id>``), and is cleared once the grant ends. Polls are
    claimed with a conditional UPDATE on ``next_poll_at`` (vault/services/device_grants.py),
    so no two instances poll the same grant at once or faster than ``interval_seconds``.
    """

    __tablename__ = "device_grants"
    __table_args__ = (
        CheckConstraint(_one_of("status", DeviceGrantStatus), name="status"),
        Index(None, "status", "next_poll_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=DeviceGrantStatus.PENDING.value)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(8), index=True)
    verification_uri: Mapped[str] = mapped_column(String(2048))
    interval_seconds: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    next_poll_at: Mapped[datetime]
    polls: Mapped[int] = mapped_column(Integer, default=0)
    last_polled_at: Mapped[datetime | None]
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    connection_id: Mapped[int | None] = mapped_column(
        ForeignKey("connections.id", ondelete="SET NULL")
    )
    # Why it ended, in words safe to show (never a code or token).
    message: Mapped[str | None] = mapped_column(Text)

    def aad(self) -> bytes:
        """Associated data of this row's ciphertext."""
        return device_grant_aad(self.id)

    def __repr__(self) -> str:  # never the codes
        return f"<DeviceGrant {self.id} {self.provider} {self.status}>"


# -- Exact counts for flat pages (issue 18) ----------------------------------------------------


class ConnectionCount(Base):
    """How many connections there are per provider, status and failing or not.

    Kept exact by database triggers on ``connections`` (vault/count_triggers.py), in the
    transaction that moves a connection; the pages read these few rows instead of counting.
    """

    __tablename__ = "connection_counts"

    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    failing: Mapped[bool] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


# The triggers need both tables; create_all runs them last.
from vault import count_triggers  # noqa: E402

count_triggers.attach(Base.metadata)
