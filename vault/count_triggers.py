"""The triggers that keep ``connection_counts`` exact and the token copies on ``connections``
current, on PostgreSQL and SQLite.

``connection_counts`` holds how many connections there are per (``provider``, ``status``,
``failing``), ``failing`` being ``failure_count > 0``: everything a connection's health
depends on that does not move with the clock (docs/architecture.md, "Exact counts").
Database triggers rather than code paths keep it, so every way a row changes (the ORM, Core
UPDATEs of the refresh engine, COPY of ``seed-demo``, a DELETE by hand) moves the count in the
same transaction as the row. An UPDATE that leaves the three columns alone moves nothing.

``connections`` also carries copies of what its token rows say (:data:`TOKEN_COPIES`): the
expiry the pages show and sort by (``expires_at``: the access token's, else the API key's),
and what the renewal check reads (the refresh token's validity and expiry; whether an API
key, an API secret, a private key are stored). Triggers on ``tokens`` copy them whenever a
row is inserted, deleted, or its expiry, validity, kind or connection moves (a re-encryption
moves nothing), so the pages' lists, counts and health read ``connections`` alone, through
its indexes, without a lookup per row in ``tokens``.

On PostgreSQL the triggers run once per statement over its transition tables (see below);
on SQLite, which has one writer at a time, once per row.

:func:`attach` installs them wherever ``create_all`` builds the schema (the tests, the
benchmarks); migrations 0016 and 0021 install the same statements, written out there.
"""

from __future__ import annotations

from sqlalchemy import DDL, MetaData, event

_KEY_MOVED = """
    (o.provider, o.status, o.failure_count > 0) IS DISTINCT FROM
    (n.provider, n.status, n.failure_count > 0)
"""
# Statement-level triggers with transition tables: one upsert per count row and statement,
# however many connections it moves (a bulk INSERT of 100,000 rows updates a handful of
# rows once, not one row 100,000 times), taken in key order so that two transactions moving
# connections in opposite directions wait for each other instead of deadlocking.
# The transition tables each statement trigger reads.
_TRANSITIONS = {
    "insert": "NEW TABLE AS new_rows",
    "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "OLD TABLE AS old_rows",
}


def _statement_triggers(name: str, table: str, function: str) -> tuple[str, ...]:
    """``<name>_insert``, ``_update`` and ``_delete``: statement triggers on ``table`` that
    run ``function`` over the statement's transition tables."""
    return tuple(
        f"CREATE TRIGGER {name}_{event} AFTER {event.upper()} ON {table} "
        f"REFERENCING {transitions} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        for event, transitions in _TRANSITIONS.items()
    )


_COUNTS_POSTGRESQL: tuple[str, ...] = (
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
)
_COUNTS_POSTGRESQL += _statement_triggers("connection_counts", "connections",
                                          "connection_counts_move")

# What a connection's token rows say about it, copied onto the connection row (each value an
# expression on the token rows of the connection ``{connection}``): the expiry the pages
# show and sort by (the access token's, else the API key's), and what the renewal check reads
# (vault.grants.StoredRows.copied): the refresh token's validity (NULL without one) and
# expiry, and whether an API key, an API secret and a private key are stored.
_ONE = ("(SELECT {column} FROM tokens"
        " WHERE connection_id = {{connection}} AND kind = '{kind}')")
_STORED = ("EXISTS (SELECT 1 FROM tokens"
           " WHERE connection_id = {{connection}} AND kind = '{kind}')")
TOKEN_COPIES = {
    "expires_at": f"coalesce({_ONE.format(column='expires_at', kind='access')}, "
                  f"{_ONE.format(column='expires_at', kind='api_key')})",
    "refresh_token_valid": _ONE.format(column="is_valid", kind="refresh"),
    "refresh_token_expires_at": _ONE.format(column="expires_at", kind="refresh"),
    "has_api_key": _STORED.format(kind="api_key"),
    "has_api_secret": _STORED.format(kind="api_secret"),
    "has_private_key": _STORED.format(kind="private_key"),
}
_COPY = f"""
    UPDATE connections SET {", ".join(f"{column} = copied.{column}" for column in TOKEN_COPIES)}
    FROM (
        SELECT changed.connection_id,
               {", ".join(f"{value.format(connection='changed.connection_id')} AS {column}"
                          for column, value in TOKEN_COPIES.items())}
        FROM (SELECT DISTINCT connection_id FROM ({{changed}}) AS rows) AS changed
    ) AS copied
    WHERE connections.id = copied.connection_id
      AND ({", ".join(f"connections.{column}" for column in TOKEN_COPIES)}) IS DISTINCT FROM
          ({", ".join(f"copied.{column}" for column in TOKEN_COPIES)});
"""
_TOKEN_MOVED = """
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.expires_at, o.is_valid, o.kind, o.connection_id) IS DISTINCT FROM
          (n.expires_at, n.is_valid, n.kind, n.connection_id)
"""
_COPIES_POSTGRESQL: tuple[str, ...] = (
    f"""
    CREATE OR REPLACE FUNCTION connection_tokens_copy() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            {_COPY.format(changed="SELECT connection_id FROM new_rows")}
        ELSIF TG_OP = 'DELETE' THEN
            {_COPY.format(changed="SELECT connection_id FROM old_rows")}
        ELSE
            {_COPY.format(changed=f"SELECT o.connection_id {_TOKEN_MOVED} "
                          f"UNION SELECT n.connection_id {_TOKEN_MOVED}")}
        END IF;
        RETURN NULL;
    END
    $$
    """,
)
_COPIES_POSTGRESQL += _statement_triggers("connection_tokens", "tokens",
                                          "connection_tokens_copy")

# SQLite: row triggers (one writer at a time, and no row versions to pile up).
_COPY_ROW = f"""
    UPDATE connections
    SET {", ".join(f"{column} = {value.format(connection='{row}.connection_id')}"
                   for column, value in TOKEN_COPIES.items())}
    WHERE id = {{row}}.connection_id;
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
_COUNTS_SQLITE = (
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
)
_COPIES_SQLITE = (
    f"CREATE TRIGGER connection_tokens_insert AFTER INSERT ON tokens "
    f"BEGIN {_COPY_ROW.format(row='NEW')} END",
    f"CREATE TRIGGER connection_tokens_delete AFTER DELETE ON tokens "
    f"BEGIN {_COPY_ROW.format(row='OLD')} END",
    f"""
    CREATE TRIGGER connection_tokens_update AFTER UPDATE OF expires_at, is_valid, kind,
    connection_id ON tokens
    WHEN OLD.expires_at IS NOT NEW.expires_at OR OLD.is_valid IS NOT NEW.is_valid
         OR OLD.kind IS NOT NEW.kind OR OLD.connection_id IS NOT NEW.connection_id
    BEGIN {_COPY_ROW.format(row="OLD")} {_COPY_ROW.format(row="NEW")} END
    """,
)


# The statements by the table whose triggers they are, for each dialect.
POSTGRESQL = {"connections": _COUNTS_POSTGRESQL, "tokens": _COPIES_POSTGRESQL}
SQLITE = {"connections": _COUNTS_SQLITE, "tokens": _COPIES_SQLITE}


def attach(metadata: MetaData) -> None:
    """Create each table's triggers right after ``create_all`` has created that table.

    On the table, not the whole metadata: a ``create_all`` over tables that are already
    there (a second app on the same database) creates nothing, triggers included.
    """
    for dialect, by_table in (("postgresql", POSTGRESQL), ("sqlite", SQLITE)):
        for table, statements in by_table.items():
            for statement in statements:
                event.listen(metadata.tables[table], "after_create",
                             DDL(statement).execute_if(dialect=dialect))
