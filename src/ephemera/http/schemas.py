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
