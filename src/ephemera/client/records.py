"""The API's JSON bodies as the library's records (``ephemera.models``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ephemera.models import (
    Artifact,
    ArtifactState,
    AuditEntry,
    Claim,
    CloseReport,
    ImportEntry,
    ImportOrigin,
    Lease,
    LinkKey,
    Session,
    SessionState,
    StorageClass,
    Task,
    TaskInput,
    TaskOutput,
    TaskState,
)


@dataclass(frozen=True, slots=True)
class ListedSession:
    """A session as the admin listing shows it: with its number of valid leases."""

    session: Session
    lease_count: int


@dataclass(frozen=True, slots=True)
class DownloadLink:
    """A signed URL that downloads one artifact without credentials until ``expires_at``."""

    url: str
    expires_at: datetime


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def session_of(body: Mapping[str, Any]) -> Session:
    return Session(
        id=body["id"],
        label=body.get("label"),
        metadata=dict(body.get("metadata") or {}),
        state=SessionState(body["state"]),
        created_at=_time(body["created_at"]),
        last_activity_at=_time(body["last_activity_at"]),
        idle_timeout_s=body.get("idle_timeout_s"),
        max_age_s=body.get("max_age_s"),
        expires_at=_maybe_time(body.get("expires_at")),
        artifact_count=int(body.get("artifact_count", 0)),
        total_bytes=int(body.get("total_bytes", 0)),
    )


def listed_session_of(body: Mapping[str, Any]) -> ListedSession:
    return ListedSession(session_of(body), int(body["lease_count"]))


def close_report_of(body: Mapping[str, Any]) -> CloseReport:
    return CloseReport(
        closed=bool(body["closed"]),
        duration_s=float(body["duration_s"]),
        artifact_count=int(body["artifact_count"]),
        deleted_bytes=int(body["deleted_bytes"]),
        storage_removed=bool(body["storage_removed"]),
    )


def artifact_of(body: Mapping[str, Any]) -> Artifact:
    return Artifact(
        id=body["id"],
        session_id=body["session_id"],
        name=body["name"],
        kind=body["kind"],
        content_type=body["content_type"],
        size=int(body["size"]),
        sha256=body["sha256"],
        storage_class=StorageClass(body["storage_class"]),
        state=ArtifactState(body["state"]),
        created_at=_time(body["created_at"]),
        expires_at=_maybe_time(body.get("expires_at")),
        retain_until=_maybe_time(body.get("retain_until")),
        producer=body.get("producer"),
        integrity=body.get("integrity"),
        integrity_error=body.get("integrity_error"),
        verified_at=_maybe_time(body.get("verified_at")),
    )


def lease_of(body: Mapping[str, Any]) -> Lease:
    return Lease(
        id=body["id"],
        session_id=body["session_id"],
        holder=body["holder"],
        artifact_ids=tuple(body["artifact_ids"]),
        created_at=_time(body["created_at"]),
        expires_at=_time(body["expires_at"]),
    )


def audit_entry_of(body: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=int(body["id"]),
        at=_time(body["at"]),
        actor=body["actor"],
        action=body["action"],
        target=body.get("target"),
        params=dict(body.get("params") or {}),
        result=dict(body.get("result") or {}),
    )


def import_entry_of(session_id: str, body: Mapping[str, Any]) -> ImportEntry:
    origin = body["origin"]
    return ImportEntry(
        session_id=session_id,
        origin=ImportOrigin(
            source=origin["source"],
            path=origin["path"],
            size=int(origin["size"]),
            mtime_ns=int(origin["mtime_ns"]),
        ),
        artifact_id=body["artifact_id"],
        sha256=body["sha256"],
        replaces=body.get("replaces"),
        imported_at=_time(body["imported_at"]),
        task_id=body.get("task_id"),
    )


def task_of(body: Mapping[str, Any]) -> Task:
    progress = body.get("progress") or {}
    return Task(
        id=body["id"],
        session_id=body["session_id"],
        processor=body["processor"],
        params=dict(body.get("params") or {}),
        inputs=tuple(TaskInput(i["session_id"], i["artifact_id"]) for i in body["inputs"]),
        state=TaskState(body["state"]),
        progress_done=int(progress.get("done", 0)),
        progress_total=progress.get("total"),
        result=body.get("result"),
        error=body.get("error"),
        outputs=tuple(
            TaskOutput(
                artifact_id=o["artifact_id"],
                name=o["name"],
                kind=o["kind"],
                content_type=o["content_type"],
                size=int(o["size"]),
                sha256=o["sha256"],
                removed=bool(o.get("removed", False)),
            )
            for o in body.get("outputs") or ()
        ),
        attempts=int(body["attempts"]),
        max_attempts=int(body["max_attempts"]),
        worker=body.get("worker"),
        created_at=_time(body["created_at"]),
        started_at=_maybe_time(body.get("started_at")),
        finished_at=_maybe_time(body.get("finished_at")),
    )


def claim_of(body: Mapping[str, Any]) -> Claim:
    return Claim(
        task=task_of(body["task"]),
        claim_id=body["claim_id"],
        claimed_until=_time(body["claimed_until"]),
        inputs=tuple(artifact_of(a) for a in body["inputs"]),
    )


def download_link_of(body: Mapping[str, Any]) -> DownloadLink:
    return DownloadLink(url=str(body["url"]), expires_at=_time(body["expires_at"]))


def link_key_of(body: Mapping[str, Any]) -> LinkKey:
    return LinkKey(
        id=body["id"],
        created_at=_time(body["created_at"]),
        revoked_at=_maybe_time(body.get("revoked_at")),
    )
