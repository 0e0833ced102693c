"""Orphan reconciliation: stale uploads, and the records to compare with the stored bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, delete, func, literal, select, tuple_, update

from ephemera.catalog.db import Database
from ephemera.catalog.predicates import PENDING
from ephemera.catalog.schema import artifacts, sessions
from ephemera.catalog.sweeps import Candidate
from ephemera.models import ArtifactState


def stale_pending(
    db: Database, cutoff: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[Candidate]:
    query = (
        select(artifacts.c.id, artifacts.c.session_id, artifacts.c.created_at)
        # Spelled literally: a partial index serves only a query that repeats its predicate.
        .where(PENDING, artifacts.c.created_at < cutoff)
        .order_by(artifacts.c.created_at, artifacts.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(
            tuple_(artifacts.c.created_at, artifacts.c.id) > tuple_(after[0], after[1])
        )
    with db.read() as conn:
        return [
            Candidate(
                id=r.id,
                session_id=r.session_id,
                size=0,
                state=ArtifactState.PENDING,
                leased=False,
                retained=False,
                order_key=r.created_at,
            )
            for r in conn.execute(query)
        ]


def drop_pending(db: Database, ids: Sequence[str], cutoff: datetime) -> list[str]:
    if not ids:
        return []
    with db.write() as conn:
        rows = conn.execute(
            delete(artifacts)
            .where(
                artifacts.c.id.in_(ids),
                artifacts.c.state == ArtifactState.PENDING,
                artifacts.c.created_at < cutoff,
            )
            .returning(artifacts.c.id)
        )
        return [r.id for r in rows]


def session_ids(db: Database, after: str | None, limit: int) -> list[str]:
    """Session IDs in byte order, a keyset page after ``after``.

    Byte order whatever the database's collation: reconciliation merges these with the
    blob store's names, sorted by bytes, and compares its saved position with both. On
    PostgreSQL the index ``ix_sessions_id_byte_order`` serves the page.
    """
    key = sessions.c.id.collate("C") if db.dialect == "postgresql" else sessions.c.id
    query = select(sessions.c.id).order_by(key).limit(limit)
    if after is not None:
        query = query.where(key > after)
    with db.read() as conn:
        return list(conn.scalars(query))


def artifact_states(db: Database, session_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Every artifact record of these sessions: session -> id -> state (index only)."""
    found: dict[str, dict[str, str]] = {sid: {} for sid in session_ids}
    query = select(artifacts.c.session_id, artifacts.c.id, artifacts.c.state).where(
        artifacts.c.session_id.in_(session_ids)
    )
    with db.read() as conn:
        for sid, aid, state in conn.execute(query):
            found[sid][aid] = state
    return found


# Separates the IDs of a session's records in one string (no ID or stored name holds one).
SEPARATOR = "/"


@dataclass(slots=True)
class RecordedIds:
    """A session's artifact records as orphan reconciliation compares them with its blobs."""

    # Every record's ID, joined by SEPARATOR, ascending in byte order (on SQLite as its
    # index returns them, which ``ids`` does not rely on).
    joined: str = ""
    count: int = 0
    unready: dict[str, str] = field(default_factory=dict)  # the records not ready: id -> state

    @property
    def ids(self) -> list[str]:
        """Every record's ID, ascending."""
        return sorted(self.joined.split(SEPARATOR)) if self.joined else []

    def matches(self, names: list[str]) -> bool:
        """Whether ``names`` (ascending) are exactly these records' IDs."""
        if len(names) != self.count:
            return False
        return SEPARATOR.join(names) == self.joined or names == self.ids


def recorded_ids(db: Database, session_ids: Sequence[str]) -> dict[str, RecordedIds]:
    """Every artifact record of these sessions, read in one pass over the index
    (session_id, id, state) and aggregated there: one row per session, its IDs joined in
    one string and its records that are not ready beside them. Building a Python row per
    record cost more than the whole index scan."""
    found = {sid: RecordedIds() for sid in session_ids}
    if not session_ids:
        return found
    unready = case(
        (artifacts.c.state != ArtifactState.READY.value, artifacts.c.id + "=" + artifacts.c.state)
    )
    if db.dialect == "postgresql":
        # Here, not at the top: a process on SQLite never loads PostgreSQL's dialect.
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        ids = func.string_agg(
            artifacts.c.id, aggregate_order_by(literal(SEPARATOR), artifacts.c.id.collate("C"))
        )
        others = func.string_agg(unready, literal(SEPARATOR))
    else:
        ids = func.group_concat(artifacts.c.id, SEPARATOR)
        others = func.group_concat(unready, SEPARATOR)
    query = (
        select(artifacts.c.session_id, ids, func.count(), others)
        .where(artifacts.c.session_id.in_(session_ids))
        .group_by(artifacts.c.session_id)
    )
    with db.read() as conn:
        for sid, joined, count, not_ready in conn.execute(query):
            entry = found[sid]
            entry.joined, entry.count = joined, count
            if not_ready:
                entry.unready = dict(r.split("=", 1) for r in not_ready.split(SEPARATOR))
    return found


def artifact_sizes(db: Database, ids: Sequence[str]) -> dict[str, int]:
    if not ids:
        return {}
    with db.read() as conn:
        rows = conn.execute(select(artifacts.c.id, artifacts.c.size).where(artifacts.c.id.in_(ids)))
        return {r[0]: r[1] or 0 for r in rows}


def mark_missing_deleting(db: Database, artifact_id: str) -> bool:
    """ready -> deleting for a record whose bytes are gone (purge on request)."""
    with db.write() as conn:
        done = conn.execute(
            update(artifacts)
            .where(artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.READY)
            .values(state=ArtifactState.DELETING)
        )
        return done.rowcount == 1


class OrphanRows:
    """Orphan reconciliation: :class:`~ephemera.catalog.Catalog`'s methods for it (one of its
    bases)."""

    _db: Database

    def stale_pending(
        self, cutoff: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[Candidate]:
        return stale_pending(self._db, cutoff, after, limit)

    def drop_pending(self, ids: Sequence[str], cutoff: datetime) -> list[str]:
        return drop_pending(self._db, ids, cutoff)

    def session_ids(self, after: str | None, limit: int) -> list[str]:
        return session_ids(self._db, after, limit)

    def artifact_states(self, session_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        return artifact_states(self._db, session_ids)

    def recorded_ids(self, session_ids: Sequence[str]) -> dict[str, RecordedIds]:
        return recorded_ids(self._db, session_ids)

    def artifact_sizes(self, ids: Sequence[str]) -> dict[str, int]:
        return artifact_sizes(self._db, ids)

    def mark_missing_deleting(self, artifact_id: str) -> bool:
        return mark_missing_deleting(self._db, artifact_id)
