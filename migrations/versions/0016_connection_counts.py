"""connection counts: connection_counts, kept exact by triggers on connections

Revision ID: 0016_connection_counts
Revises: 0015_device_grants
Create Date: 2026-12-03 00:00:00

connection_counts holds how many connections there are per provider, status and failing
(failure_count > 0), so the pages read a few rows instead of counting every connection.
Triggers on connections (PostgreSQL and SQLite) move the counts in the same transaction as
the row; the statements are those of vault/count_triggers.py, written out here so that this
migration stays what it was. The table is filled from the connections present.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0016_connection_counts'
down_revision = '0015_device_grants'
branch_labels = None
depends_on = None

POSTGRESQL = (
    """
    CREATE OR REPLACE FUNCTION connection_counts_move() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        old_key text;
        new_key text;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO connection_counts (provider, status, failing, count)
            VALUES (NEW.provider, NEW.status, NEW.failure_count > 0, 1)
            ON CONFLICT (provider, status, failing)
            DO UPDATE SET count = connection_counts.count + 1;
        ELSIF TG_OP = 'DELETE' THEN
            UPDATE connection_counts SET count = count - 1
            WHERE provider = OLD.provider AND status = OLD.status
              AND failing = (OLD.failure_count > 0);
        ELSE
            old_key := concat_ws('/', OLD.provider, OLD.status, OLD.failure_count > 0);
            new_key := concat_ws('/', NEW.provider, NEW.status, NEW.failure_count > 0);
            IF old_key < new_key THEN
                UPDATE connection_counts SET count = count - 1
                WHERE provider = OLD.provider AND status = OLD.status
                  AND failing = (OLD.failure_count > 0);
            END IF;
            INSERT INTO connection_counts (provider, status, failing, count)
            VALUES (NEW.provider, NEW.status, NEW.failure_count > 0, 1)
            ON CONFLICT (provider, status, failing)
            DO UPDATE SET count = connection_counts.count + 1;
            IF old_key >= new_key THEN
                UPDATE connection_counts SET count = count - 1
                WHERE provider = OLD.provider AND status = OLD.status
                  AND failing = (OLD.failure_count > 0);
            END IF;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER connection_counts_insert_delete AFTER INSERT OR DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION connection_counts_move()
    """,
    """
    CREATE TRIGGER connection_counts_update AFTER UPDATE OF provider, status, failure_count
    ON connections FOR EACH ROW
    WHEN (OLD.provider IS DISTINCT FROM NEW.provider OR OLD.status IS DISTINCT FROM NEW.status
          OR (OLD.failure_count > 0) IS DISTINCT FROM (NEW.failure_count > 0))
    EXECUTE FUNCTION connection_counts_move()
    """,
)

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
    f"CREATE TRIGGER connection_counts_delete AFTER DELETE ON connections BEGIN {_SQLITE_REMOVE} END",
    f"""
    CREATE TRIGGER connection_counts_update AFTER UPDATE OF provider, status, failure_count
    ON connections
    WHEN OLD.provider IS NOT NEW.provider OR OLD.status IS NOT NEW.status
         OR (OLD.failure_count > 0) IS NOT (NEW.failure_count > 0)
    BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END
    """,
)


def upgrade():
    op.create_table('connection_counts',
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('failing', sa.Boolean(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('provider', 'status', 'failing', name=op.f('pk_connection_counts'))
    )
    postgresql = op.get_bind().dialect.name == 'postgresql'
    if postgresql:
        # No connection may move between the count and the triggers taking over.
        op.execute("LOCK TABLE connections IN SHARE ROW EXCLUSIVE MODE")
    op.execute(
        "INSERT INTO connection_counts (provider, status, failing, count) "
        "SELECT provider, status, failure_count > 0, count(*) FROM connections "
        "GROUP BY provider, status, failure_count > 0"
    )
    for statement in POSTGRESQL if postgresql else SQLITE:
        op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER connection_counts_update ON connections")
        op.execute("DROP TRIGGER connection_counts_insert_delete ON connections")
        op.execute("DROP FUNCTION connection_counts_move()")
    else:
        for name in ('connection_counts_update', 'connection_counts_delete',
                     'connection_counts_insert'):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table('connection_counts')
