"""Row -> model builders: the records the catalog hands out, built from its rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from ephemera.models import (
    AdminKey,
    Artifact,
    ArtifactState,
    AuditEntry,
    KeyRole,
    Session,
    SessionState,
    StorageClass,
    TaskOutput,
)


def session_model(row: Row[Any], count: int = 0, total: int = 0) -> Session:
    return Session(
        id=row.id,
        label=row.label,
        metadata=row.metadata,
        state=SessionState(row.state),
        created_at=row.created_at,
        last_activity_at=row.last_activity_at,
        idle_timeout_s=row.idle_timeout_s,
        max_age_s=row.max_age_s,
        expires_at=row.expires_at,
        artifact_count=count,
        total_bytes=total,
    )


def key_model(row: Row[Any]) -> AdminKey:
    return AdminKey(
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        role=KeyRole(row.role),
        expires_at=row.expires_at,
    )


def audit_model(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        params=row.params,
        result=row.result,
    )


def artifact_model(row: Row[Any]) -> Artifact:
    return Artifact(
        id=row.id,
        session_id=row.session_id,
        name=row.name,
        kind=row.kind,
        content_type=row.content_type,
        size=row.size or 0,
        sha256=row.sha256 or "",
        storage_class=StorageClass(row.storage_class),
        state=ArtifactState(row.state),
        created_at=row.created_at,
        expires_at=row.expires_at,
        retain_until=row.retain_until,
        producer=row.producer,
        integrity=row.integrity,
        integrity_error=row.integrity_error,
        verified_at=row.verified_at,
    )


def task_output(row: Any, removed: bool = False) -> TaskOutput:
    return TaskOutput(
        artifact_id=row.id,
        name=row.name,
        kind=row.kind,
        content_type=row.content_type,
        size=row.size or 0,
        sha256=row.sha256 or "",
        removed=removed,
    )
