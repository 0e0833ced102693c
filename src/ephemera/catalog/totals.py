"""Store-wide artifact totals by (storage class, state), maintained rather than summed.

Triggers on ``artifacts`` (migration 0011) keep them: on SQLite each change is added to
``artifact_totals`` at once; on PostgreSQL each writing statement appends its delta to
``artifact_totals_log``, so concurrent writers share no row. A reader adds the two in one
statement (one snapshot), which is exact whatever is being written or folded. ``fold`` moves
the log into the totals in one transaction; the cleanup's quota pass runs it at every tick,
and a reader runs it first when the log has grown long, so reading stays a few rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, union_all, update
from sqlalchemy import delete as delete_rows

from ephemera.catalog.db import Database
from ephemera.catalog.schema import artifact_totals, artifact_totals_log
from ephemera.models import ArtifactState

# Log rows a reader adds up before it folds them first (cheap to tell: the ID span).
FOLD_AFTER = 1000


@dataclass(frozen=True, slots=True)
class Total:
    storage_class: str
    state: str
    artifacts: int
    bytes: int


def read(db: Database) -> list[Total]:
    """Every (storage class, state) that holds artifacts, with their count and bytes."""
    with db.read() as conn:
        first, last = conn.execute(
            select(func.min(artifact_totals_log.c.id), func.max(artifact_totals_log.c.id))
        ).one()
    if first is not None and last - first >= FOLD_AFTER:
        fold(db)
    with db.read() as conn:
        return summed(conn)


def summed(conn: Connection) -> list[Total]:
    """``read`` inside a caller's transaction (without folding first)."""
    parts = union_all(
        select(
            artifact_totals.c.storage_class,
            artifact_totals.c.state,
            artifact_totals.c.artifacts,
            artifact_totals.c.bytes,
        ),
        select(
            artifact_totals_log.c.storage_class,
            artifact_totals_log.c.state,
            artifact_totals_log.c.artifacts,
            artifact_totals_log.c.bytes,
        ),
    ).subquery()
    query = (
        select(
            parts.c.storage_class,
            parts.c.state,
            func.sum(parts.c.artifacts),
            func.sum(parts.c.bytes),
        )
        .group_by(parts.c.storage_class, parts.c.state)
        .order_by(parts.c.storage_class, parts.c.state)
    )
    rows = conn.execute(query).all()
    return [Total(r[0], r[1], int(r[2]), int(r[3])) for r in rows if r[2] or r[3]]


def stored_bytes(db: Database) -> int:
    """Bytes of every artifact record, whatever its state (what the quota weighs)."""
    return sum(t.bytes for t in read(db))


def ready(db: Database) -> tuple[int, int]:
    """(count, bytes) of the ready artifacts."""
    totals = [t for t in read(db) if t.state == ArtifactState.READY]
    return sum(t.artifacts for t in totals), sum(t.bytes for t in totals)


def fold(db: Database) -> int:
    """Move the logged deltas into the totals; returns how many log rows it folded.

    Exact under concurrency: the delete takes exactly the rows it returns, and the totals
    change in the same transaction. Folds queue on the totals table's lock, so a second one
    sees what the first moved; writers never touch that table on PostgreSQL, and readers
    are not blocked by it.
    """
    with db.write() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE artifact_totals IN EXCLUSIVE MODE")
        moved = conn.execute(
            delete_rows(artifact_totals_log).returning(
                artifact_totals_log.c.storage_class,
                artifact_totals_log.c.state,
                artifact_totals_log.c.artifacts,
                artifact_totals_log.c.bytes,
            )
        ).all()
        deltas: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for storage_class, state, count, size in moved:
            delta = deltas[(storage_class, state)]
            delta[0] += count
            delta[1] += size
        for (storage_class, state), (count, size) in sorted(deltas.items()):
            key = (artifact_totals.c.storage_class == storage_class) & (
                artifact_totals.c.state == state
            )
            changed = conn.execute(
                update(artifact_totals)
                .where(key)
                .values(
                    artifacts=artifact_totals.c.artifacts + count,
                    bytes=artifact_totals.c.bytes + size,
                )
            ).rowcount
            if not changed:
                conn.execute(
                    insert(artifact_totals).values(
                        storage_class=storage_class,
                        state=state,
                        artifacts=count,
                        bytes=size,
                    )
                )
        return len(moved)


class TotalsRows:
    """The ``Catalog`` methods over the maintained totals."""

    _db: Database

    def artifact_totals(self) -> list[Total]:
        return read(self._db)

    def stored_bytes(self) -> int:
        return stored_bytes(self._db)

    def ready_totals(self) -> tuple[int, int]:
        return ready(self._db)

    def fold_totals(self) -> int:
        return fold(self._db)
