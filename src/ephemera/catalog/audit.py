"""The audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select

from ephemera.catalog.db import Database
from ephemera.catalog.rows import audit_model
from ephemera.catalog.schema import audit_log
from ephemera.models import AuditEntry


def insert_audit(
    db: Database,
    at: datetime,
    actor: str,
    action: str,
    target: str | None,
    params: dict[str, Any],
    result: dict[str, Any],
) -> int:
    with db.write() as conn:
        row = conn.execute(
            insert(audit_log)
            .values(at=at, actor=actor, action=action, target=target, params=params, result=result)
            .returning(audit_log.c.id)
        ).one()
        return int(row.id)


def list_audit(
    db: Database,
    before: int | None,
    limit: int,
    action_prefix: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEntry]:
    """Newest first, below the ``before`` ID (keyset paging): entries whose action starts
    with ``action_prefix``, by exactly ``actor``, at or after ``since`` and before ``until``."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(audit_log.c.id < before)
    if action_prefix:
        query = query.where(audit_log.c.action.startswith(action_prefix, autoescape=True))
    if actor:
        query = query.where(audit_log.c.actor == actor)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if until is not None:
        query = query.where(audit_log.c.at < until)
    with db.read() as conn:
        return [audit_model(r) for r in conn.execute(query)]


def last_audit_per_action(db: Database, action_prefix: str) -> list[AuditEntry]:
    latest = (
        select(func.max(audit_log.c.id))
        .where(audit_log.c.action.startswith(action_prefix, autoescape=True))
        .group_by(audit_log.c.action)
    )
    with db.read() as conn:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.id.in_(latest)).order_by(audit_log.c.action)
        )
        return [audit_model(r) for r in rows]
