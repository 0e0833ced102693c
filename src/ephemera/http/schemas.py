"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ephemera.ids import SESSION_ID_RE
from ephemera.models import Artifact, Session

SECONDS = Field(None, ge=1, le=315_360_000)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, pattern=f"^{SESSION_ID_RE.pattern}$")
    label: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None
    idle_timeout_s: int | None = SECONDS
    max_age_s: int | None = SECONDS


class SessionOut(BaseModel):
    id: str
    label: str | None
    metadata: dict[str, Any]
    state: str
    created_at: datetime
    last_activity_at: datetime
    idle_timeout_s: int | None
    max_age_s: int | None
    expires_at: datetime | None
    artifact_count: int
    total_bytes: int

    @classmethod
    def of(cls, s: Session) -> SessionOut:
        return cls(
            id=s.id,
            label=s.label,
            metadata=s.metadata,
            state=s.state.value,
            created_at=s.created_at,
            last_activity_at=s.last_activity_at,
            idle_timeout_s=s.idle_timeout_s,
            max_age_s=s.max_age_s,
            expires_at=s.expires_at,
            artifact_count=s.artifact_count,
            total_bytes=s.total_bytes,
        )


class SessionCreated(SessionOut):
    token: str = Field(description="Shown once: keep it, it is stored only as a hash")


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class CloseReportOut(BaseModel):
    closed: bool
    duration_s: float
    artifact_count: int
    deleted_bytes: int
    storage_removed: bool


class ArtifactOut(BaseModel):
    id: str
    session_id: str
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    storage_class: str
    state: str
    created_at: datetime
    expires_at: datetime | None
    retain_until: datetime | None

    @classmethod
    def of(cls, a: Artifact) -> ArtifactOut:
        return cls(
            id=a.id,
            session_id=a.session_id,
            name=a.name,
            kind=a.kind,
            content_type=a.content_type,
            size=a.size,
            sha256=a.sha256,
            storage_class=a.storage_class.value,
            state=a.state.value,
            created_at=a.created_at,
            expires_at=a.expires_at,
            retain_until=a.retain_until,
        )


class ArtifactPage(BaseModel):
    items: list[ArtifactOut]
    next_cursor: str | None


class JsonUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    data_base64: str
    kind: str | None = None
    content_type: str | None = None
    storage: str | None = None
    expires_in_s: int | None = SECONDS
    sha256: str | None = None


class Health(BaseModel):
    status: str
