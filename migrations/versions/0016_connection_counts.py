"""connection counts: connection_counts and connections.expires_at, kept by triggers; list and search indexes

Revision ID: 0016_connection_counts
Revises: 0015_device_grants
Create Date: 2026-12-03 00:00:00

connection_counts holds how many connections there are per provider, status and failing
(failure_count > 0), so the pages read a few rows instead of counting every connection.
Triggers on connections (PostgreSQL and SQLite) move the counts in the same transaction as
the row; the statements are those of vault/count_triggers.py, written out here so that this
migration stays what it was. The table is filled from the connections present.

connections.expires_at is the expiry the pages show and sort by (the access token's, else the
API key's), copied from tokens by triggers on tokens, so the connections list pages through
an index (expires_at, id). Lower-case indexes on the account's e-mail, name and subject serve
the list's search by prefix.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0016_connection_counts'
down_revision = '0015_device_grants'
branch_labels = None
depends_on = None

_KEY_MOVED = """
    (o.provider, o.status, o.failure_count > 0) IS DISTINCT FROM
    (n.provider, n.status, n.failure_count > 0)
"""
# Statement-level triggers with transition tables: one upsert per count row and statement,
# however many connections it moves (a bulk INSERT of 100,000 rows updates a handful of
# rows once, not one row 100,000 times), taken in key order so that two transactions moving
# connections in opposite directions wait for each other instead of deadlocking.
POSTGRESQL = (
    f"""
    CREATE OR REPLACE FUNCTION connection_counts_move() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO connection_counts AS c (provider, status, failing, count)
            SELECT provider, status, failure_count > 0, count(*) FROM new_rows
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            ON CONFLICT (provider, status, failing) DO UPDATE SET count = c.count + excluded.count;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO connection_counts AS c (provider, status, failing, count)
            SELECT provider, status, failure_count > 0, -count(*) FROM old_rows
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            ON CONFLICT (provider, status, failing) DO UPDATE SET count = c.count + excluded.count;
        ELSE
            INSERT INTO connection_counts AS c (provider, status, failing, count)
            SELECT provider, status, failing, sum(delta) FROM (
                SELECT o.provider, o.status, o.failure_count > 0 AS failing, -1 AS delta
                FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE {_KEY_MOVED}
                UNION ALL
                SELECT n.provider, n.status, n.failure_count > 0, 1
                FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE {_KEY_MOVED}
            ) AS moves
            GROUP BY 1, 2, 3 HAVING sum(delta) <> 0 ORDER BY 1, 2, 3
            ON CONFLICT (provider, status, failing) DO UPDATE SET count = c.count + excluded.count;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER connection_counts_insert AFTER INSERT ON connections
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION connection_counts_move()
    """,
    """
    CREATE TRIGGER connection_counts_update AFTER UPDATE ON connections
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION connection_counts_move()
    """,
    """
    CREATE TRIGGER connection_counts_delete AFTER DELETE ON connections
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION connection_counts_move()
    """,
)

_EXPIRES_AT = """
    coalesce(
        (SELECT expires_at FROM tokens WHERE connection_id = {row}.connection_id
           AND kind = 'access'),
        (SELECT expires_at FROM tokens WHERE connection_id = {row}.connection_id
           AND kind = 'api_key'))
"""
_COPY_EXPIRY = f"""
    UPDATE connections SET expires_at = moved.expires_at
    FROM (
        SELECT changed.connection_id, {_EXPIRES_AT.format(row="changed")} AS expires_at
        FROM (SELECT DISTINCT connection_id FROM ({{changed}}) AS rows
              WHERE kind IN ('access', 'api_key')) AS changed
    ) AS moved
    WHERE connections.id = moved.connection_id
      AND connections.expires_at IS DISTINCT FROM moved.expires_at;
"""
_TOKEN_MOVED = """
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.expires_at, o.kind, o.connection_id) IS DISTINCT FROM
          (n.expires_at, n.kind, n.connection_id)
"""
POSTGRESQL += (
    f"""
    CREATE OR REPLACE FUNCTION connection_expiry_copy() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            {_COPY_EXPIRY.format(changed="SELECT connection_id, kind FROM new_rows")}
        ELSIF TG_OP = 'DELETE' THEN
            {_COPY_EXPIRY.format(changed="SELECT connection_id, kind FROM old_rows")}
        ELSE
            {_COPY_EXPIRY.format(changed=f"SELECT o.connection_id, o.kind {_TOKEN_MOVED} "
                                 f"UNION SELECT n.connection_id, n.kind {_TOKEN_MOVED}")}
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER connection_expiry_insert AFTER INSERT ON tokens
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION connection_expiry_copy()
    """,
    """
    CREATE TRIGGER connection_expiry_update AFTER UPDATE ON tokens
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION connection_expiry_copy()
    """,
    """
    CREATE TRIGGER connection_expiry_delete AFTER DELETE ON tokens
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION connection_expiry_copy()
    """,
)

# SQLite: row triggers (one writer at a time, and no row versions to pile up).
_EXPIRY = """
    UPDATE connections SET expires_at = coalesce(
        (SELECT expires_at FROM tokens WHERE connection_id = {row}.connection_id
           AND kind = 'access'),
        (SELECT expires_at FROM tokens WHERE connection_id = {row}.connection_id
           AND kind = 'api_key'))
    WHERE id = {row}.connection_id;
"""
_SQLITE_ADD = """
    INSERT INTO connection_counts (provider, status, failing, count)
    VALUES (NEW.provider, NEW.status, NEW.failure_count > 0, 1)
    ON CONFLICT (provider, status, failing) DO UPDATE SET count = count + 1;
"""
_SQLITE_REMOVE = """
    UPDATE connection_counts SET count = count - 1
    WHERE provider = OLD.provider AND status = OLD.status AND failing = (OLD.failure_count > 0);
"""
SQLITE = (
    f"CREATE TRIGGER connection_counts_insert AFTER INSERT ON connections BEGIN {_SQLITE_ADD} END",
    f"CREATE TRIGGER connection_counts_delete AFTER DELETE ON connections "
    f"BEGIN {_SQLITE_REMOVE} END",
    f"""
    CREATE TRIGGER connection_counts_update AFTER UPDATE OF provider, status, failure_count
    ON connections
    WHEN OLD.provider IS NOT NEW.provider OR OLD.status IS NOT NEW.status
         OR (OLD.failure_count > 0) IS NOT (NEW.failure_count > 0)
    BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END
    """,
    f"""
    CREATE TRIGGER connection_expiry_insert AFTER INSERT ON tokens
    WHEN NEW.kind IN ('access', 'api_key') BEGIN {_EXPIRY.format(row="NEW")} END
    """,
    f"""
    CREATE TRIGGER connection_expiry_delete AFTER DELETE ON tokens
    WHEN OLD.kind IN ('access', 'api_key') BEGIN {_EXPIRY.format(row="OLD")} END
    """,
    f"""
    CREATE TRIGGER connection_expiry_update AFTER UPDATE OF expires_at, kind, connection_id
    ON tokens
    WHEN OLD.expires_at IS NOT NEW.expires_at OR OLD.kind IS NOT NEW.kind
         OR OLD.connection_id IS NOT NEW.connection_id
    BEGIN {_EXPIRY.format(row="OLD")} {_EXPIRY.format(row="NEW")} END
    """,
)


# Search by the start of an e-mail, name or subject whatever the case (PostgreSQL only:
# SQLite scans).
SEARCH_COLUMNS = ('account_email', 'account_name', 'account_subject')


def upgrade():
    op.create_table('connection_counts',
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('failing', sa.Boolean(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'status', 'failing', name=op.f('pk_connection_counts'))
    )
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_connections_expires_at_id'), ['expires_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_connections_status_failure_count_expires_at'), ['status', 'failure_count', 'expires_at'], unique=False)
    postgresql = op.get_bind().dialect.name == 'postgresql'
    if postgresql:
        for column in SEARCH_COLUMNS:
            op.execute(f"CREATE INDEX ix_connections_lower_{column} "
                       f"ON connections (lower({column}) text_pattern_ops)")
    if postgresql:
        # No connection or token may move between the backfill and the triggers taking over.
        op.execute("LOCK TABLE connections, tokens IN SHARE ROW EXCLUSIVE MODE")
    op.execute(
        "UPDATE connections SET expires_at = coalesce("
        "(SELECT expires_at FROM tokens WHERE connection_id = connections.id AND kind = 'access'), "
        "(SELECT expires_at FROM tokens WHERE connection_id = connections.id AND kind = 'api_key'))"
    )
    op.execute(
        "INSERT INTO connection_counts (provider, status, failing, count) "
        "SELECT provider, status, failure_count > 0, count(*) FROM connections "
        "GROUP BY provider, status, failure_count > 0"
    )
    for statement in POSTGRESQL if postgresql else SQLITE:
        op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        for name in ('insert', 'update', 'delete'):
            op.execute(f"DROP TRIGGER connection_expiry_{name} ON tokens")
            op.execute(f"DROP TRIGGER connection_counts_{name} ON connections")
        op.execute("DROP FUNCTION connection_expiry_copy()")
        op.execute("DROP FUNCTION connection_counts_move()")
        for column in SEARCH_COLUMNS:
            op.execute(f"DROP INDEX ix_connections_lower_{column}")
    else:
        for name in ('connection_expiry_update', 'connection_expiry_delete',
                     'connection_expiry_insert', 'connection_counts_update',
                     'connection_counts_delete', 'connection_counts_insert'):
            op.execute(f"DROP TRIGGER {name}")
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connections_status_failure_count_expires_at'))
        batch_op.drop_index(batch_op.f('ix_connections_expires_at_id'))
        batch_op.drop_column('expires_at')
    op.drop_table('connection_counts')
