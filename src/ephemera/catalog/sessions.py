"""Sessions: create, read, touch, update, close and drop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, delete, func, insert, select, update

from ephemera.catalog import events
from ephemera.catalog.db import Database, lock_first
from ephemera.catalog.idempotency import Completion, complete
from ephemera.catalog.leases import release_task_leases
from ephemera.catalog.predicates import live_session, session_leased
from ephemera.catalog.rows import session_model
from ephemera.catalog.schema import (
    artifacts,
    import_ledger,
    lease_artifacts,
    leases,
    sessions,
    tasks,
    uploads,
)
from ephemera.catalog.tasks import end_task
from ephemera.catalog.usage import ready_usage
from ephemera.errors import Conflict
from ephemera.models import ArtifactState, Session, SessionState, TaskState

_ready_usage = (
    select(
        artifacts.c.session_id,
        func.count().label("artifact_count"),
        func.coalesce(func.sum(artifacts.c.size), 0).label("artifact_bytes"),
    )
    .where(artifacts.c.state == ArtifactState.READY)
    .group_by(artifacts.c.session_id)
)


def insert_session(
    db: Database,
    values: dict[str, Any],
    confirm: Callable[[Session], None] | None = None,
    completion: Completion[Session] | None = None,
) -> Session:
    """Insert a session; ``confirm`` sees it before the commit and may still refuse it;
    ``completion`` records its Idempotency-Key in the same transaction."""
    with db.write(duplicate=f"session {values['id']} already exists") as conn:
        conn.execute(insert(sessions).values(**values))
        row = conn.execute(select(sessions).where(sessions.c.id == values["id"])).one()
        session = session_model(row)
        # Marks where this session's events start: earlier ones of its ID are another's.
        events.record(conn, [events.opened(session.id, session.created_at)])
        if confirm is not None:
            confirm(session)
        if completion is not None:
            complete(conn, completion, session)
    return session


def is_live(db: Database, session_id: str, now: datetime) -> bool:
    with db.read() as conn:
        return bool(conn.scalar(select(live_session(now)).where(sessions.c.id == session_id)))


# Built once: every authenticated request runs it, and building the statement (not only
# compiling it, which SQLAlchemy caches) costs more Python than running it on SQLite.
_SESSION_WITH_LIVENESS = select(
    sessions, live_session(bindparam("now", type_=sessions.c.expires_at.type)).label("live")
).where(sessions.c.id == bindparam("session_id"))


def session_with_liveness(db: Database, session_id: str, now: datetime) -> Row[Any] | None:
    """The session row plus a ``live`` column, in one read (the request hot path)."""
    with db.read() as conn:
        return conn.execute(_SESSION_WITH_LIVENESS, {"session_id": session_id, "now": now}).first()


def get_session_row(db: Database, session_id: str) -> Row[Any] | None:
    with db.read() as conn:
        return conn.execute(select(sessions).where(sessions.c.id == session_id)).first()


def get_session(db: Database, session_id: str) -> Session | None:
    with db.read() as conn:
        row = conn.execute(select(sessions).where(sessions.c.id == session_id)).first()
        if row is None:
            return None
        count, total = ready_usage(conn, session_id)
    return session_model(row, count, total)


def list_sessions_with_leases(
    db: Database, after: str | None, limit: int, now: datetime
) -> list[tuple[Session, int]]:
    usage = _ready_usage.subquery()
    lease_count = (
        select(func.count())
        .where(leases.c.session_id == sessions.c.id, leases.c.expires_at > now)
        .scalar_subquery()
    )
    query = (
        select(
            sessions,
            usage.c.artifact_count,
            usage.c.artifact_bytes,
            lease_count.label("lease_count"),
        )
        .outerjoin(usage, usage.c.session_id == sessions.c.id)
        .order_by(sessions.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(sessions.c.id > after)
    with db.read() as conn:
        return [
            (session_model(r, r.artifact_count or 0, r.artifact_bytes or 0), int(r.lease_count))
            for r in conn.execute(query)
        ]


def touch_session(
    db: Database, session_id: str, now: datetime, expires_at: datetime | None, not_since: datetime
) -> None:
    """Record activity, unless it was recorded after ``not_since`` (keeps reads cheap)."""
    with db.write() as conn:
        conn.execute(
            update(sessions)
            .where(
                sessions.c.id == session_id,
                sessions.c.state == SessionState.OPEN,
                sessions.c.last_activity_at < not_since,
            )
            .values(last_activity_at=now, expires_at=expires_at)
        )


def update_session(
    db: Database,
    session_id: str,
    now: datetime,
    change: Callable[[Row[Any]], dict[str, Any]],
    confirm: Callable[[Session], None] | None = None,
) -> tuple[Session, Session] | None:
    """Apply ``change(row)``'s values to a live session, atomically; (before, after).

    None if the session is not live. ``change`` and ``confirm`` run inside the transaction:
    if either raises, nothing changes.
    """
    with db.write() as conn:
        row = conn.execute(
            select(sessions, live_session(now).label("live"))
            .where(sessions.c.id == session_id)
            .with_for_update(of=sessions)
        ).first()
        if row is None or not row.live:
            return None
        values = change(row)
        conn.execute(update(sessions).where(sessions.c.id == session_id).values(**values))
        count, total = ready_usage(conn, session_id)
        after = conn.execute(select(sessions).where(sessions.c.id == session_id)).one()
        before_session = session_model(row, count, total)
        after_session = session_model(after, count, total)
        if confirm is not None:
            confirm(after_session)
    return before_session, after_session


def begin_close(
    db: Database, session_id: str, now: datetime, *, force: bool = True
) -> Session | None:
    """open/closing -> closing; returns the session as it was, or None if it is gone.

    Without ``force`` a session that a valid lease protects is refused (Conflict).
    """
    with db.write() as conn:
        lock_first(conn, select(sessions.c.id).where(sessions.c.id == session_id))
        row = conn.execute(
            select(sessions, session_leased(now).label("leased"))
            .where(sessions.c.id == session_id)
            .with_for_update()
        ).first()
        if row is None:
            return None
        if row.leased and not force:
            raise Conflict(f"session {session_id} is leased; close with force to override")
        if row.leased:
            # Forced: every task holding a lease here (its own, and others reading its
            # reference data) is cancelled; outputs elsewhere are left `deleting`, which
            # recovery and orphan reconciliation finish.
            for task_id in conn.scalars(
                select(leases.c.task_id)
                .where(leases.c.session_id == session_id, leases.c.task_id.is_not(None))
                .distinct()
            ).all():
                end_task(
                    conn,
                    task_id,
                    TaskState.CANCELLED,
                    now,
                    error=f"cancelled: session {session_id} was closed",
                )
        count, total = ready_usage(conn, session_id)
        if row.state == SessionState.OPEN:
            conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .values(state=SessionState.CLOSING, closing_since=now)
            )
            events.record(conn, [events.session_event(session_id, "session.closing")])
    return session_model(row, count, total)


# Removes the bytes of the open resumable uploads (ID, pieces) of the sessions being dropped,
# inside the dropping transaction: if it fails, nothing is dropped.
DiscardUploads = Callable[[list[tuple[str, dict[str, Any]]]], None]


def drop_session(
    db: Database, session_id: str, discard_uploads: DiscardUploads | None = None
) -> tuple[int, int] | None:
    """Remove a closing session's records (its bytes must already be gone).

    Returns the number and bytes of the artifact records removed, or None when another
    caller removed the session first: exactly one caller counts each session.
    """
    return drop_sessions(db, [session_id], discard_uploads).get(session_id)


def closing_session_ids(db: Database, after: str | None, limit: int) -> list[str]:
    """Sessions left ``closing``, in ID order, a page after ``after``."""
    query = select(sessions.c.id).where(sessions.c.state == SessionState.CLOSING)
    if after is not None:
        query = query.where(sessions.c.id > after)
    with db.read() as conn:
        return list(conn.scalars(query.order_by(sessions.c.id).limit(limit)))


def drop_sessions(
    db: Database, session_ids: Sequence[str], discard_uploads: DiscardUploads | None = None
) -> dict[str, tuple[int, int]]:
    """``drop_session`` for many ``closing`` sessions in one write transaction.

    Returns the number and bytes of the artifact records removed, by session, for the
    sessions this call removed (those still ``closing``; others are left alone).
    """
    if not session_ids:
        return {}
    with db.write() as conn:
        # Session rows first, in ID order, then what they own: every remover locks in this
        # order, so two of them (a close and a recovery on another replica) never deadlock.
        lock_first(
            conn,
            select(sessions.c.id).where(sessions.c.id.in_(session_ids)).order_by(sessions.c.id),
        )
        closing = list(
            conn.scalars(
                select(sessions.c.id).where(
                    sessions.c.id.in_(session_ids), sessions.c.state == SessionState.CLOSING
                )
            )
        )
        if not closing:
            return {}
        usage = {
            r.session_id: (int(r.n), int(r.total))
            for r in conn.execute(
                select(
                    artifacts.c.session_id,
                    func.count().label("n"),
                    func.coalesce(func.sum(artifacts.c.size), 0).label("total"),
                )
                .where(artifacts.c.session_id.in_(closing))
                .group_by(artifacts.c.session_id)
            )
        }
        lease_ids = select(leases.c.id).where(leases.c.session_id.in_(closing))
        conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id.in_(lease_ids)))
        conn.execute(delete(leases).where(leases.c.session_id.in_(closing)))
        release_task_leases(conn, select(tasks.c.id).where(tasks.c.session_id.in_(closing)))
        conn.execute(delete(tasks).where(tasks.c.session_id.in_(closing)))
        conn.execute(delete(artifacts).where(artifacts.c.session_id.in_(closing)))
        conn.execute(delete(import_ledger).where(import_ledger.c.session_id.in_(closing)))
        if discard_uploads is not None:
            # A resumable upload's bytes live outside the session's prefix until it is done.
            unfinished = conn.execute(
                select(uploads.c.id, uploads.c.pieces).where(
                    uploads.c.session_id.in_(closing), uploads.c.state != "done"
                )
            ).all()
            if unfinished:
                discard_uploads([(r.id, dict(r.pieces)) for r in unfinished])
        conn.execute(delete(uploads).where(uploads.c.session_id.in_(closing)))
        conn.execute(delete(sessions).where(sessions.c.id.in_(closing)))
        events.record(conn, [events.session_event(s, "session.closed") for s in closing])
    return {session_id: usage.get(session_id, (0, 0)) for session_id in closing}
