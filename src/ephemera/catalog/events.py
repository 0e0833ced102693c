"""The event log: what happened in a session, recorded with the change, read by its streams.

Each change that a stream reports writes its event in the change's own transaction
(``record``), so an event exists exactly when the change committed. Events are read in ID
order from a cursor. On SQLite one writer at a time makes ID order commit order. On
PostgreSQL IDs are drawn when the row is inserted, not when it commits; so that a stream
never reads an event after a later one of its session (and skips it for good), a writer
takes a transaction advisory lock per session before inserting: the events of one session
are then inserted and committed one transaction at a time. The events are written (and the
locks taken, in one global order) at the very end of the transaction, and held only until
its commit: a holder never waits for a row lock, so it cannot be part of a deadlock.

Pruning removes the oldest events (a prefix of the IDs), keeping the newest one, so the
smallest ID kept tells a stream whether anything after its cursor is gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from ephemera.catalog.db import Database, announce, defer, write_time
from ephemera.catalog.notify import session_topic
from ephemera.catalog.schema import events, sessions
from ephemera.models import Artifact, Event

# The first key of the two-key advisory locks of event writers (its own key space).
_LOCK_SPACE = 0x45564E54  # "EVNT"
OPENED = "session.opened"

NewEvent = tuple[str, str, dict[str, Any]]  # session, type, data


def record(conn: Connection, new: Sequence[NewEvent]) -> None:
    """Append events in the caller's write transaction: they are written at its end, after
    its other statements (see the module's note on locks)."""
    if new:
        defer(conn, "events", new, _write)


def _write(conn: Connection, new: list[NewEvent]) -> None:
    touched = sorted({session_id for session_id, _, _ in new})
    if conn.dialect.name == "postgresql":
        for key in sorted({_lock_key(s) for s in touched}):
            conn.execute(select(func.pg_advisory_xact_lock(_LOCK_SPACE, key)))
    at = write_time(conn)
    conn.execute(
        insert(events), [{"session_id": s, "type": t, "data": d, "at": at} for s, t, d in new]
    )
    for session_id in touched:
        announce(conn, session_topic(session_id))


def _lock_key(session_id: str) -> int:
    """A signed 32-bit key; sessions sharing one only wait for each other."""
    return int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:4], "big", signed=True)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a stream of a session starts, read in one statement (one snapshot)."""

    token_hash: str
    created_at: datetime
    live_head: int  # the session's newest event ID (0: none kept)
    opened: int | None  # the ID of this session's opening event, if kept
    oldest: int | None  # the smallest ID kept in the whole log


def start(db: Database, session_id: str) -> Start | None:
    """The session's identity and its place in the log; None if the session is gone.

    The opening event of the session as it is now is the newest ``session.opened`` of its
    ID: events before it belong to an earlier session of that ID and are never streamed.
    """
    of_session = events.c.session_id == session_id
    with db.read() as conn:
        row = conn.execute(
            select(
                sessions.c.token_hash,
                sessions.c.created_at,
                select(func.max(events.c.id)).where(of_session).scalar_subquery().label("head"),
                select(func.max(events.c.id))
                .where(of_session, events.c.type == OPENED)
                .scalar_subquery()
                .label("opened"),
                select(func.min(events.c.id)).scalar_subquery().label("oldest"),
            ).where(sessions.c.id == session_id)
        ).first()
    if row is None:
        return None
    return Start(row.token_hash, row.created_at, row.head or 0, row.opened, row.oldest)


def read(db: Database, session_id: str, after: int, limit: int) -> tuple[list[Event], int | None]:
    """The session's events after ``after``, in order, and the smallest ID kept in the log
    (None if empty): a cursor below it may have missed pruned events."""
    with db.read() as conn:
        rows = conn.execute(
            select(events)
            .where(events.c.session_id == session_id, events.c.id > after)
            .order_by(events.c.id)
            .limit(limit)
        ).all()
        oldest = conn.scalar(select(func.min(events.c.id)))
    return [Event(r.id, r.session_id, r.type, r.data, r.at) for r in rows], oldest


def prune(db: Database, cutoff: datetime, batch: int) -> int:
    """Remove events recorded before ``cutoff``, oldest first, in batches; the newest event
    is always kept. Returns how many were removed; the cost follows that number."""
    with db.read() as conn:
        # The newest event before the cutoff, found from the end of ``ix_events_at``: a
        # ``max(id)`` under the same condition walks the IDs down from the newest and, when
        # nothing is due yet, reads the whole log on every scheduled tick.
        last = conn.scalar(
            select(events.c.id)
            .where(events.c.at < cutoff)
            .order_by(events.c.at.desc(), events.c.id.desc())
            .limit(1)
        )
        newest = conn.scalar(select(func.max(events.c.id)))
        low = conn.scalar(select(func.min(events.c.id)))
    if last is None or newest is None or low is None:
        return 0
    last = min(last, newest - 1)
    removed = 0
    while low <= last:
        high = min(low + batch - 1, last)
        with db.write() as conn:
            removed += conn.execute(
                delete(events).where(events.c.id >= low, events.c.id <= high)
            ).rowcount
        low = high + 1
    return removed


# -- the events, as the catalog's modules record them ------------------------------------------


def opened(session_id: str, created_at: datetime) -> NewEvent:
    return session_id, OPENED, {"session_id": session_id, "created_at": created_at.isoformat()}


def session_event(session_id: str, type_: str) -> NewEvent:
    """``session.closing`` or ``session.closed``."""
    return session_id, type_, {"session_id": session_id}


def artifact_created(artifact: Artifact) -> NewEvent:
    return (
        artifact.session_id,
        "artifact.created",
        {
            "artifact_id": artifact.id,
            "name": artifact.name,
            "kind": artifact.kind,
            "content_type": artifact.content_type,
            "size": artifact.size,
            "sha256": artifact.sha256,
            "producer": artifact.producer,
        },
    )


def artifact_deleted(session_id: str, artifact_id: str, by: str) -> NewEvent:
    """``by``: "request" (a delete), "cleanup" (a cleanup rule), "task" (an attempt that did
    not succeed drops its outputs)."""
    return session_id, "artifact.deleted", {"artifact_id": artifact_id, "by": by}


def task_state(row: Any) -> NewEvent:
    """From a ``tasks`` row as it is after the change."""
    data = {
        "task_id": row.id,
        "processor": row.processor,
        "state": row.state,
        "attempts": row.attempts,
        "error": row.error,
    }
    return row.session_id, "task.state", data


def task_progress(session_id: str, task_id: str, done: int, total: int | None) -> NewEvent:
    return session_id, "task.progress", {"task_id": task_id, "done": done, "total": total}


class EventRows:
    """The event log: :class:`~ephemera.catalog.Catalog`'s methods for it (one of its bases)."""

    _db: Database

    def event_start(self, session_id: str) -> Start | None:
        return start(self._db, session_id)

    def read_events(
        self, session_id: str, after: int, limit: int
    ) -> tuple[list[Event], int | None]:
        return read(self._db, session_id, after, limit)

    def prune_events(self, cutoff: datetime, batch: int = 10_000) -> int:
        return prune(self._db, cutoff, batch)
