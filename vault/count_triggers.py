"""The triggers that keep ``connection_counts`` exact and ``connections.expires_at`` current,
on PostgreSQL and SQLite.

``connection_counts`` holds how many connections there are per (``provider``, ``status``,
``failing``), ``failing`` being ``failure_count > 0``: everything a connection's health
depends on that does not move with the clock (docs/architecture.md, "Exact counts").
Database triggers rather than code paths keep it, so every way a row changes (the ORM, Core
UPDATEs of the refresh engine, COPY of ``seed-demo``, a DELETE by hand) moves the count in the
same transaction as the row. An UPDATE that leaves the three columns alone moves nothing.

``connections.expires_at`` is the expiry the pages show and sort by: the access token's, else
the API key's (``tokens.expires_at``). Triggers on ``tokens`` copy it whenever such a row is
inserted, deleted or its expiry moves (a re-encryption moves nothing), so the connections list
pages through an index on ``connections`` alone.

On PostgreSQL the triggers run once per statement over its transition tables (see below);
on SQLite, which has one writer at a time, once per row.

:func:`attach` installs them wherever ``create_all`` builds the schema (the tests, the
benchmarks); migration 0016 installs the same statements, written out there.
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
POSTGRESQL: tuple[str, ...] = (
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


def attach(metadata: MetaData) -> None:
    """Create the triggers after ``metadata.create_all`` has created the tables."""
    for dialect, statements in (("postgresql", POSTGRESQL), ("sqlite", SQLITE)):
        for statement in statements:
            event.listen(metadata, "after_create", DDL(statement).execute_if(dialect=dialect))
