"""token copies: what renewal reads of a connection's token rows, copied onto connections; covering search indexes

Revision ID: 0021_token_copies
Revises: 0020_flat_pages
Create Date: 2026-12-03 00:00:00

connections gains refresh_token_valid, refresh_token_expires_at, has_api_key,
has_api_secret and has_private_key: the refresh token's validity and expiry, and which other
kinds are stored, what the renewal check reads. The triggers on tokens that copied
expires_at (migration 0016) are replaced by ones that copy it and these, in the transaction
that changes the rows, so the pages' lists, counts and health read connections alone. The
statements are those of vault/count_triggers.py, written out here so that this migration
stays what it was; the columns are filled from the tokens present.

The search indexes on lower(account_email), lower(account_name) and lower(account_subject)
(PostgreSQL) now carry the column and the id (INCLUDE), so a search's capped total is
counted from the indexes alone.
"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0021_token_copies'
down_revision = '0020_flat_pages'
branch_labels = None
depends_on = None

_ONE = ("(SELECT {column} FROM tokens"
        " WHERE connection_id = {{connection}} AND kind = '{kind}')")
_STORED = ("EXISTS (SELECT 1 FROM tokens"
           " WHERE connection_id = {{connection}} AND kind = '{kind}')")
EXPIRES_AT = {
    "expires_at": f"coalesce({_ONE.format(column='expires_at', kind='access')}, "
                  f"{_ONE.format(column='expires_at', kind='api_key')})",
}
TOKEN_COPIES = EXPIRES_AT | {
    "refresh_token_valid": _ONE.format(column="is_valid", kind="refresh"),
    "refresh_token_expires_at": _ONE.format(column="expires_at", kind="refresh"),
    "has_api_key": _STORED.format(kind="api_key"),
    "has_api_secret": _STORED.format(kind="api_secret"),
    "has_private_key": _STORED.format(kind="private_key"),
}
_TOKEN_MOVED = """
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.expires_at, o.is_valid, o.kind, o.connection_id) IS DISTINCT FROM
          (n.expires_at, n.is_valid, n.kind, n.connection_id)
"""


def _postgresql(name, copies):
    """The statement triggers (and their function) that copy ``copies`` onto connections."""
    copy = f"""
        UPDATE connections SET {", ".join(f"{column} = copied.{column}" for column in copies)}
        FROM (
            SELECT changed.connection_id,
                   {", ".join(f"{value.format(connection='changed.connection_id')} AS {column}"
                              for column, value in copies.items())}
            FROM (SELECT DISTINCT connection_id FROM ({{changed}}) AS rows) AS changed
        ) AS copied
        WHERE connections.id = copied.connection_id
          AND ({", ".join(f"connections.{column}" for column in copies)}) IS DISTINCT FROM
              ({", ".join(f"copied.{column}" for column in copies)});
    """
    function = f"""
    CREATE OR REPLACE FUNCTION {name}_copy() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            {copy.format(changed="SELECT connection_id FROM new_rows")}
        ELSIF TG_OP = 'DELETE' THEN
            {copy.format(changed="SELECT connection_id FROM old_rows")}
        ELSE
            {copy.format(changed=f"SELECT o.connection_id {_TOKEN_MOVED} "
                         f"UNION SELECT n.connection_id {_TOKEN_MOVED}")}
        END IF;
        RETURN NULL;
    END
    $$
    """
    tables = {"insert": "NEW TABLE AS new_rows", "delete": "OLD TABLE AS old_rows",
              "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows"}
    return [function] + [
        f"CREATE TRIGGER {name}_{event} AFTER {event.upper()} ON tokens "
        f"REFERENCING {transition} FOR EACH STATEMENT EXECUTE FUNCTION {name}_copy()"
        for event, transition in tables.items()
    ]


def _sqlite(name, copies):
    """The row triggers that copy ``copies`` onto connections (SQLite)."""
    values = ", ".join(f"{column} = {value.format(connection='{row}.connection_id')}"
                       for column, value in copies.items())
    copy = f"UPDATE connections SET {values} WHERE id = {{row}}.connection_id;"
    return [
        f"CREATE TRIGGER {name}_insert AFTER INSERT ON tokens "
        f"BEGIN {copy.format(row='NEW')} END",
        f"CREATE TRIGGER {name}_delete AFTER DELETE ON tokens "
        f"BEGIN {copy.format(row='OLD')} END",
        f"CREATE TRIGGER {name}_update AFTER UPDATE OF expires_at, is_valid, kind, "
        f"connection_id ON tokens "
        f"WHEN OLD.expires_at IS NOT NEW.expires_at OR OLD.is_valid IS NOT NEW.is_valid "
        f"OR OLD.kind IS NOT NEW.kind OR OLD.connection_id IS NOT NEW.connection_id "
        f"BEGIN {copy.format(row='OLD')} {copy.format(row='NEW')} END",
    ]


SEARCH_COLUMNS = ('account_email', 'account_name', 'account_subject')


def _search_indexes(include):
    for column in SEARCH_COLUMNS:
        op.execute(f"DROP INDEX ix_connections_lower_{column}")
        op.execute(f"CREATE INDEX ix_connections_lower_{column} ON connections "
                   f"(lower({column}) text_pattern_ops)"
                   + (f" INCLUDE ({column}, id)" if include else ""))


def _drop(name, postgresql):
    for event in ('insert', 'update', 'delete'):
        op.execute(f"DROP TRIGGER {name}_{event}" + (" ON tokens" if postgresql else ""))
    if postgresql:
        op.execute(f"DROP FUNCTION {name}_copy()")


# Plain ADD/DROP COLUMN, not batch mode: rebuilding connections on SQLite would drop its
# count triggers (docs/architecture.md, "Exact counts and flat pages").
def upgrade():
    postgresql = op.get_bind().dialect.name == 'postgresql'
    op.add_column('connections', sa.Column('refresh_token_valid', sa.Boolean(), nullable=True))
    op.add_column('connections', sa.Column('refresh_token_expires_at',
                                           sa.DateTime(timezone=True), nullable=True))
    for column in ('has_api_key', 'has_api_secret', 'has_private_key'):
        op.add_column('connections', sa.Column(column, sa.Boolean(), nullable=False,
                                               server_default=sa.false()))
    if postgresql:
        # No token may move between the backfill and the new triggers taking over.
        op.execute("LOCK TABLE connections, tokens IN SHARE ROW EXCLUSIVE MODE")
    _drop('connection_expiry', postgresql)
    op.execute("UPDATE connections SET " + ", ".join(
        f"{column} = {value.format(connection='connections.id')}"
        for column, value in TOKEN_COPIES.items()))
    for statement in (_postgresql if postgresql else _sqlite)('connection_tokens', TOKEN_COPIES):
        op.execute(statement)
    if postgresql:
        _search_indexes(include=True)


def downgrade():
    postgresql = op.get_bind().dialect.name == 'postgresql'
    if postgresql:
        _search_indexes(include=False)
    _drop('connection_tokens', postgresql)
    for statement in (_postgresql if postgresql else _sqlite)('connection_expiry', EXPIRES_AT):
        op.execute(statement)
    for column in ('has_private_key', 'has_api_secret', 'has_api_key',
                   'refresh_token_expires_at', 'refresh_token_valid'):
        op.drop_column('connections', column)
