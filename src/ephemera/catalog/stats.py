"""Counts for the admin overview and /metrics, and what each cleanup would delete now.

The cleanable counts are one set-based query each over the sweeps' own conditions: what a
dry run would report (count, bytes, protected) without walking candidates one by one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select

from ephemera.catalog import totals as artifact_totals
from ephemera.catalog.db import Database
from ephemera.catalog.predicates import artifact_leased, session_leased, session_retained
from ephemera.catalog.resumable import DONE
from ephemera.catalog.schema import (
    api_keys,
    artifacts,
    import_ledger,
    lease_artifacts,
    leases,
    sessions,
    tasks,
    uploads,
)
from ephemera.catalog.sweeps import ArtifactSweep, SessionSweep
from ephemera.models import ArtifactState, SessionState


def totals(db: Database) -> tuple[int, int, int]:
    """(sessions, ready artifacts, their bytes); the artifacts from the maintained totals."""
    with db.read() as conn:
        count = conn.scalar(select(func.count()).select_from(sessions)) or 0
    artifact_count, total = artifact_totals.ready(db)
    return int(count), artifact_count, total


def session_states(db: Database) -> dict[str, int]:
    with db.read() as conn:
        rows = conn.execute(select(sessions.c.state, func.count()).group_by(sessions.c.state))
        return {r[0]: int(r[1]) for r in rows}


def lease_counts(db: Database, now: datetime) -> dict[str, int]:
    with db.read() as conn:
        valid = leases.c.expires_at > now
        active = conn.scalar(select(func.count()).select_from(leases).where(valid)) or 0
        leased_sessions = (
            conn.scalar(select(func.count(func.distinct(leases.c.session_id))).where(valid)) or 0
        )
        leased_artifacts = (
            conn.scalar(
                select(func.count(func.distinct(lease_artifacts.c.artifact_id)))
                .select_from(lease_artifacts.join(leases))
                .where(valid)
            )
            or 0
        )
    return {
        "leases": int(active),
        "sessions": int(leased_sessions),
        "artifacts": int(leased_artifacts),
    }


def task_counts(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return {
            state: int(count)
            for state, count in conn.execute(
                select(tasks.c.state, func.count()).group_by(tasks.c.state)
            )
        }


def table_row_counts(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return {
            t.name: conn.scalar(select(func.count()).select_from(t)) or 0
            for t in (sessions, artifacts, api_keys, leases, lease_artifacts, tasks, import_ledger)
        }


def _cleanable(
    selected: ColumnElement[bool], size: ColumnElement[Any]
) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    """(count, bytes, protected) columns over rows where ``selected`` marks the deletable."""
    return (
        func.coalesce(func.sum(case((selected, 1), else_=0)), 0),
        func.coalesce(func.sum(case((selected, size), else_=0)), 0),
        func.coalesce(func.sum(case((selected, 0), else_=1)), 0),
    )


def cleanable_artifacts(db: Database, sweep: ArtifactSweep) -> tuple[int, int, int]:
    """(count, bytes, protected) an artifact pass of ``sweep`` would report: what it selects,
    less the ready ones a lease protects (an interrupted deletion is finished regardless)."""
    protected = and_(artifacts.c.state == ArtifactState.READY, artifact_leased(sweep.now))
    query = select(*_cleanable(~protected, func.coalesce(artifacts.c.size, 0))).where(
        artifacts.c.state.in_([ArtifactState.READY, ArtifactState.DELETING]), sweep.condition()
    )
    with db.read() as conn:
        count, size, spared = conn.execute(query).one()
    return int(count), int(size), int(spared)


def cleanable_sessions(db: Database, sweep: SessionSweep) -> tuple[int, int, int]:
    """(count, bytes, protected) a session pass of ``sweep`` would report: the sessions it
    selects, less the open ones a lease or a retained artifact protects; bytes are every
    artifact record of each (what closing it removes)."""
    held = or_(session_leased(sweep.now), session_retained(sweep.now))
    protected = and_(sessions.c.state == SessionState.OPEN, held)
    size = (
        select(func.coalesce(func.sum(artifacts.c.size), 0))
        .where(artifacts.c.session_id == sessions.c.id)
        .scalar_subquery()
    )
    query = select(*_cleanable(~protected, size)).where(sweep.condition())
    with db.read() as conn:
        count, total, spared = conn.execute(query).one()
    return int(count), int(total), int(spared)


def cleanable_uploads(db: Database, now: datetime, stale_before: datetime) -> tuple[int, int]:
    """(count, recorded bytes) of the unfinished resumable uploads past their expiry that no
    live writer holds: what the ``expired-upload`` rule removes."""
    query = select(func.count(), func.coalesce(func.sum(uploads.c.upload_offset), 0)).where(
        uploads.c.expires_at <= now,
        uploads.c.state != DONE,
        uploads.c.writer.is_(None) | (uploads.c.heartbeat_at < stale_before),
    )
    with db.read() as conn:
        count, size = conn.execute(query).one()
    return int(count), int(size)
