"""The console overview's reads: the largest and the idlest sessions, a named lock's expiry,
and the last audit entry of one actor's action.

Each stays cheap however large the store grows: the largest sessions are one grouped pass
over the ready artifacts cut to a few rows before anything is joined, the idlest a walk of
the ``last_activity_at`` index that stops after a few rows, and the other two a primary key
and an ``(action, id)`` index lookup.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from ephemera.catalog.db import Database
from ephemera.catalog.rows import audit_model, session_model
from ephemera.catalog.schema import artifacts, audit_log, locks, sessions
from ephemera.models import ArtifactState, AuditEntry, Session, SessionState


class OverviewCatalog:
    """One method per statement, like ``Catalog``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def largest_sessions(self, limit: int) -> list[Session]:
        """The ``limit`` sessions holding the most bytes in ready artifacts, largest first
        (then by ID); sessions holding nothing are not listed."""
        count = func.count().label("artifact_count")
        size = func.coalesce(func.sum(artifacts.c.size), 0).label("artifact_bytes")
        top = (
            select(artifacts.c.session_id, count, size)
            .where(artifacts.c.state == ArtifactState.READY)
            .group_by(artifacts.c.session_id)
            .order_by(size.desc(), artifacts.c.session_id)
            .limit(limit)
            .subquery()
        )
        query = (
            select(sessions, top.c.artifact_count, top.c.artifact_bytes)
            .join(top, top.c.session_id == sessions.c.id)
            .order_by(top.c.artifact_bytes.desc(), sessions.c.id)
        )
        with self._db.read() as conn:
            return [
                session_model(r, int(r.artifact_count), int(r.artifact_bytes))
                for r in conn.execute(query)
            ]

    def idlest_sessions(self, limit: int) -> list[Session]:
        """The ``limit`` open sessions whose last activity is the oldest, oldest first, with
        what each holds."""
        # `state || ''` keeps the (state, expires_at) index out: without statistics SQLite
        # would take it and sort every open session; the last_activity_at index, walked in
        # order, stops after `limit` open ones.
        top = (
            select(sessions)
            .where(sessions.c.state.concat("") == SessionState.OPEN)
            .order_by(sessions.c.last_activity_at)
            .limit(limit)
            .subquery()
        )
        usage = (
            select(
                artifacts.c.session_id,
                func.count().label("artifact_count"),
                func.coalesce(func.sum(artifacts.c.size), 0).label("artifact_bytes"),
            )
            .where(
                artifacts.c.state == ArtifactState.READY,
                artifacts.c.session_id.in_(select(top.c.id)),
            )
            .group_by(artifacts.c.session_id)
            .subquery()
        )
        query = (
            select(top, usage.c.artifact_count, usage.c.artifact_bytes)
            .outerjoin(usage, usage.c.session_id == top.c.id)
            .order_by(top.c.last_activity_at, top.c.id)
        )
        with self._db.read() as conn:
            return [
                session_model(r, int(r.artifact_count or 0), int(r.artifact_bytes or 0))
                for r in conn.execute(query)
            ]

    def lock_expiry(self, name: str) -> datetime | None:
        """Until when the named lock's row is held; None without a row (never taken, or
        taken as a PostgreSQL advisory lock, which has no expiry)."""
        with self._db.read() as conn:
            value: datetime | None = conn.scalar(
                select(locks.c.expires_at).where(locks.c.name == name)
            )
        return value

    def last_audit(self, action: str, actor: str) -> AuditEntry | None:
        """The newest audit entry of ``action`` recorded by ``actor``."""
        with self._db.read() as conn:
            row = conn.execute(
                select(audit_log)
                .where(audit_log.c.action == action, audit_log.c.actor == actor)
                .order_by(audit_log.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else audit_model(row)
