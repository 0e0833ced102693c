"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ephemera.ids import SESSION_ID_RE

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
    model_config = ConfigDict(from_attributes=True)

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


class SessionCreated(SessionOut):
    token: str = Field(description="Shown once: keep it, it is stored only as a hash")


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class CloseReportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    closed: bool
    duration_s: float
    artifact_count: int
    deleted_bytes: int
    storage_removed: bool


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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


class LeaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: int | None = Field(None, ge=1, description="Seconds until it expires unless renewed")
    holder: str = Field("", max_length=200, description="Who holds it, for people reading stats")
    artifact_ids: list[str] = Field(
        default_factory=list, max_length=1000, description="Empty: the whole session"
    )


class LeaseRenew(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: int | None = Field(None, ge=1)


class LeaseOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    session_id: str
    holder: str
    artifact_ids: list[str]
    created_at: datetime
    expires_at: datetime


class LeaseList(BaseModel):
    items: list[LeaseOut]


class RetentionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retain_until: datetime | None


class CleanupErrorOut(BaseModel):
    target: str
    error: str


class CleanupItemOut(BaseModel):
    kind: str
    id: str
    session_id: str | None
    size: int
    rule: str


class CleanupReportOut(BaseModel):
    operation: str
    dry_run: bool
    deleted_count: int
    deleted_size_bytes: int
    deleted_size_mb: float
    skipped_protected: int
    errors: list[CleanupErrorOut]
    duration_s: float
    items: list[CleanupItemOut] | None = None
    reports: list[CleanupReportOut] | None = None
    totals: dict[str, float] | None = None


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    params: dict[str, Any]
    result: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class AdminSessionOut(SessionOut):
    lease_count: int


class SessionTotals(BaseModel):
    sessions: int
    artifacts: int
    bytes: int


class AdminSessionPage(BaseModel):
    items: list[AdminSessionOut]
    next_cursor: str | None
    totals: SessionTotals


class CleanupStats(BaseModel):
    at: datetime
    sessions: dict[str, int]
    artifacts: list[dict[str, Any]]
    cleanable: dict[str, dict[str, int]]
    leased: dict[str, int]
    usage: dict[str, int | None]
    last_runs: dict[str, dict[str, Any]]
