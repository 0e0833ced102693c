"""Leases: what protects a session or some of its artifacts from deletion and expiry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, delete, insert, select, update

from ephemera.catalog.db import Database
from ephemera.catalog.predicates import live_session
from ephemera.catalog.schema import artifacts, lease_artifacts, leases, sessions
from ephemera.errors import Conflict, NotFound
from ephemera.models import ArtifactState, Lease


def insert_lease(db: Database, lease: Lease) -> None:
    """Record a lease if its session is live and every named artifact is ready in it."""
    with db.write() as conn:
        # A protector locks what it protects exclusively, so a cleaner's check that comes
        # after its lock always sees the lease (see lock_first).
        live = conn.scalar(
            select(live_session(lease.created_at))
            .where(sessions.c.id == lease.session_id)
            .with_for_update()
        )
        if not live:
            raise NotFound(f"session {lease.session_id} not found")
        if lease.artifact_ids:
            found = set(
                conn.scalars(
                    select(artifacts.c.id)
                    .where(
                        artifacts.c.session_id == lease.session_id,
                        artifacts.c.id.in_(lease.artifact_ids),
                        artifacts.c.state == ArtifactState.READY,
                    )
                    .with_for_update(read=True)
                )
            )
            missing = sorted(set(lease.artifact_ids) - found)
            if missing:
                raise NotFound(f"artifact {missing[0]} not found")
        conn.execute(
            insert(leases).values(
                id=lease.id,
                session_id=lease.session_id,
                holder=lease.holder,
                scope="artifacts" if lease.artifact_ids else "session",
                created_at=lease.created_at,
                expires_at=lease.expires_at,
            )
        )
        if lease.artifact_ids:
            conn.execute(
                insert(lease_artifacts),
                [{"lease_id": lease.id, "artifact_id": a} for a in lease.artifact_ids],
            )


def _leases(conn: Connection, *where: ColumnElement[bool]) -> list[Lease]:
    """The leases ``where`` selects, with the artifacts each names, in one query, by ID."""
    rows = conn.execute(
        select(leases, lease_artifacts.c.artifact_id)
        .outerjoin(lease_artifacts, lease_artifacts.c.lease_id == leases.c.id)
        .where(*where)
        .order_by(leases.c.id, lease_artifacts.c.artifact_id)
    )
    found: dict[str, tuple[Row[Any], list[str]]] = {}
    for row in rows:
        names = found.setdefault(row.id, (row, []))[1]
        if row.artifact_id is not None:
            names.append(row.artifact_id)
    return [
        Lease(
            id=row.id,
            session_id=row.session_id,
            holder=row.holder,
            artifact_ids=tuple(names),
            created_at=row.created_at,
            expires_at=row.expires_at,
        )
        for row, names in found.values()
    ]


def _lease(conn: Connection, session_id: str, lease_id: str) -> Lease | None:
    found = _leases(conn, leases.c.id == lease_id, leases.c.session_id == session_id)
    return found[0] if found else None


def get_lease(db: Database, session_id: str, lease_id: str) -> Lease | None:
    with db.read() as conn:
        return _lease(conn, session_id, lease_id)


def renew_lease(
    db: Database, session_id: str, lease_id: str, now: datetime, expires_at: datetime
) -> Lease | None:
    """Extend a lease that is still valid; an expired lease cannot come back."""
    with db.write() as conn:
        refuse_task_lease(
            conn.scalar(
                select(leases.c.task_id).where(
                    leases.c.id == lease_id, leases.c.session_id == session_id
                )
            )
        )
        done = conn.execute(
            update(leases)
            .where(
                leases.c.id == lease_id,
                leases.c.session_id == session_id,
                leases.c.expires_at > now,
            )
            .values(expires_at=expires_at)
        )
        if done.rowcount != 1:
            return None
        return _lease(conn, session_id, lease_id)


def delete_lease(db: Database, session_id: str, lease_id: str) -> bool:
    with db.write() as conn:
        owned = conn.execute(
            select(leases.c.id, leases.c.task_id).where(
                leases.c.id == lease_id, leases.c.session_id == session_id
            )
        ).first()
        if owned is None:
            return False
        refuse_task_lease(owned.task_id)
        conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id == lease_id))
        conn.execute(delete(leases).where(leases.c.id == lease_id))
        return True


def list_leases(db: Database, session_id: str) -> list[Lease]:
    with db.read() as conn:
        return _leases(conn, leases.c.session_id == session_id)


def purge_expired_leases(db: Database, now: datetime) -> int:
    """Drop lease rows that protect nothing any more."""
    with db.write() as conn:
        stale = select(leases.c.id).where(leases.c.expires_at <= now)
        conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id.in_(stale)))
        return conn.execute(delete(leases).where(leases.c.expires_at <= now)).rowcount


def refuse_task_lease(task_id: str | None) -> None:
    if task_id is not None:
        raise Conflict(f"this lease belongs to task {task_id}: it ends when the task does")


def release_task_leases(conn: Connection, task_ids: Any) -> None:
    held = select(leases.c.id).where(leases.c.task_id.in_(task_ids))
    conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id.in_(held)))
    conn.execute(delete(leases).where(leases.c.task_id.in_(task_ids)))
