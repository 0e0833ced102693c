"""Artifact totals kept by triggers, so the quota and the stats read them without a scan.

SQLite runs one writer at a time: row-level triggers add each change to ``artifact_totals``
directly. PostgreSQL writers run at once: a shared totals row would be a hot spot and a
lock-order deadlock between them, so statement-level triggers append one delta row per
statement (from its transition tables) to ``artifact_totals_log``, which readers add in and
``catalog.totals.fold`` moves into the totals.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"

_SQLITE_TRIGGERS = (
    # Adding one row's (count, bytes) under its key; `WHERE true` lets SQLite parse the upsert
    # of an INSERT ... SELECT.
    """
    CREATE TRIGGER artifact_totals_insert AFTER INSERT ON artifacts BEGIN
        INSERT INTO artifact_totals (storage_class, state, artifacts, bytes)
        SELECT NEW.storage_class, NEW.state, 1, coalesce(NEW.size, 0) WHERE true
        ON CONFLICT (storage_class, state) DO UPDATE SET
            artifacts = artifacts + excluded.artifacts, bytes = bytes + excluded.bytes;
    END
    """,
    """
    CREATE TRIGGER artifact_totals_delete AFTER DELETE ON artifacts BEGIN
        UPDATE artifact_totals SET artifacts = artifacts - 1, bytes = bytes - coalesce(OLD.size, 0)
        WHERE storage_class = OLD.storage_class AND state = OLD.state;
    END
    """,
    """
    CREATE TRIGGER artifact_totals_update AFTER UPDATE OF storage_class, state, size ON artifacts
    WHEN OLD.storage_class IS NOT NEW.storage_class OR OLD.state IS NOT NEW.state
        OR OLD.size IS NOT NEW.size
    BEGIN
        UPDATE artifact_totals SET artifacts = artifacts - 1, bytes = bytes - coalesce(OLD.size, 0)
        WHERE storage_class = OLD.storage_class AND state = OLD.state;
        INSERT INTO artifact_totals (storage_class, state, artifacts, bytes)
        SELECT NEW.storage_class, NEW.state, 1, coalesce(NEW.size, 0) WHERE true
        ON CONFLICT (storage_class, state) DO UPDATE SET
            artifacts = artifacts + excluded.artifacts, bytes = bytes + excluded.bytes;
    END
    """,
)

# (event, transition tables, the signed rows of the statement)
_POSTGRES_EVENTS = (
    (
        "insert",
        "REFERENCING NEW TABLE AS new_rows",
        "SELECT storage_class, state, 1 AS n, coalesce(size, 0) AS b FROM new_rows",
    ),
    (
        "delete",
        "REFERENCING OLD TABLE AS old_rows",
        "SELECT storage_class, state, -1 AS n, -coalesce(size, 0) AS b FROM old_rows",
    ),
    (
        "update",
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "SELECT storage_class, state, 1 AS n, coalesce(size, 0) AS b FROM new_rows"
        " UNION ALL"
        " SELECT storage_class, state, -1, -coalesce(size, 0) FROM old_rows",
    ),
)


def _postgres_function(event: str, rows: str) -> str:
    # Updates that change no total (a touch, a verification) add nothing: HAVING drops them.
    return f"""
    CREATE FUNCTION artifact_totals_{event}d() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO artifact_totals_log (storage_class, state, artifacts, bytes)
        SELECT storage_class, state, sum(n), sum(b) FROM ({rows}) AS changed
        GROUP BY storage_class, state
        HAVING sum(n) <> 0 OR sum(b) <> 0;
        RETURN NULL;
    END
    $$
    """  # noqa: S608 (built from this module's constants)


def upgrade() -> None:
    op.create_table(
        "artifact_totals",
        sa.Column("storage_class", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("artifacts", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("storage_class", "state", name="pk_artifact_totals"),
    )
    op.create_table(
        "artifact_totals_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("storage_class", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("artifacts", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_artifact_totals_log"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Writers wait for the backfill: no change slips between the count and the triggers.
        op.execute("LOCK TABLE artifacts IN SHARE ROW EXCLUSIVE MODE")
        for event, transition, rows in _POSTGRES_EVENTS:
            op.execute(_postgres_function(event, rows))
            op.execute(
                f"CREATE TRIGGER artifact_totals_{event} AFTER {event.upper()} ON artifacts"
                f" {transition} FOR EACH STATEMENT EXECUTE FUNCTION artifact_totals_{event}d()"
            )
    else:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)
    op.execute(
        "INSERT INTO artifact_totals (storage_class, state, artifacts, bytes)"
        " SELECT storage_class, state, count(*), coalesce(sum(size), 0) FROM artifacts"
        " GROUP BY storage_class, state"
    )


def downgrade() -> None:
    bind = op.get_bind()
    for event in ("insert", "delete", "update"):
        op.execute(
            f"DROP TRIGGER IF EXISTS artifact_totals_{event}"
            + (" ON artifacts" if bind.dialect.name == "postgresql" else "")
        )
        if bind.dialect.name == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS artifact_totals_{event}d()")
    op.drop_table("artifact_totals_log")
    op.drop_table("artifact_totals")
