"""The triggers that keep ``connection_counts`` exact, on PostgreSQL and SQLite.

``connection_counts`` holds how many connections there are per (``provider``, ``status``,
``failing``), ``failing`` being ``failure_count > 0``: everything a connection's health
depends on that does not move with the clock (docs/architecture.md, "Exact counts").
Database triggers rather than code paths keep it, so every way a row changes (the ORM, Core
UPDATEs of the refresh engine, COPY of ``seed-demo``, a DELETE by hand) moves the count in the
same transaction as the row. An UPDATE that leaves the three columns alone fires nothing.

On PostgreSQL an UPDATE that moves a connection from one count row to another touches the
two rows in key order, so two transactions moving connections in opposite directions wait
for each other instead of deadlocking. SQLite has one writer at a time.

:func:`attach` installs them wherever ``create_all`` builds the schema (the tests, the
benchmarks); migration 0016 installs the same statements, written out there.
"""

from __future__ import annotations

from sqlalchemy import DDL, MetaData, event

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


def attach(metadata: MetaData) -> None:
    """Create the triggers after ``metadata.create_all`` has created the tables."""
    for dialect, statements in (("postgresql", POSTGRESQL), ("sqlite", SQLITE)):
        for statement in statements:
            event.listen(metadata, "after_create", DDL(statement).execute_if(dialect=dialect))
