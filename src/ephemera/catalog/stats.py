"""Counts for the admin overview and /metrics."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from ephemera.catalog import totals as artifact_totals
from ephemera.catalog.db import Database
from ephemera.catalog.schema import (
    api_keys,
    artifacts,
    import_ledger,
    lease_artifacts,
    leases,
    sessions,
    tasks,
)


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
