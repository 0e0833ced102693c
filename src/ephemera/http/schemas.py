"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ephemera.ids import SESSION_ID_RE
from ephemera.models import MAX_TIMEOUT_S

SECONDS = Field(None, ge=1, le=MAX_TIMEOUT_S)


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


class SessionUpdate(BaseModel):
    """Only the fields sent change; ``null`` clears the label or makes a timeout "never"."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Replaces the metadata")
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
    integrity: str | None = Field(
        None, description="Set when verification found the bytes 'corrupt' or 'missing'"
    )
    integrity_error: str | None = None
    verified_at: datetime | None = Field(None, description="When the bytes last hashed right")


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


class CleanupProtectedOut(BaseModel):
    """An item a rule selected but a protection spared."""

    kind: str = Field(description="`artifact` or `session`")
    id: str
    session_id: str | None
    size: int = Field(description="Bytes it holds (a session: all its artifacts)")
    rule: str = Field(description="The rule that selected it")
    reason: Literal["leased", "retained"] = Field(
        description="`leased`: a valid lease names it (an artifact: it or its whole session; "
        "a session: it or any of its artifacts). `retained`: the session holds artifacts "
        "retained until later (named only when no lease holds it)"
    )


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
    protected: list[CleanupProtectedOut] | None = Field(
        None,
        description="With `details`: every item counted in `skipped_protected`, with the "
        "reason it was spared (`all`: in each part's report)",
    )
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
    tasks: dict[str, int] = Field(description="Tasks by state")
    usage: dict[str, int | None]
    integrity: dict[str, Any] = Field(
        description="Artifacts flagged corrupt or missing, never verified, last verify run"
    )
    last_runs: dict[str, dict[str, Any]]


class VerifyProblemOut(BaseModel):
    session_id: str
    artifact_id: str
    name: str
    integrity: str
    error: str
    dropped: bool


class VerifyReportOut(BaseModel):
    checked_count: int
    checked_bytes: int
    missing_count: int
    corrupt_count: int
    restored_count: int = Field(description="Flagged artifacts whose bytes hash right again")
    repaired_count: int = Field(description="Flagged artifacts dropped (repair=drop)")
    skipped_protected: int = Field(description="Flagged artifacts a lease kept from being dropped")
    interrupted: bool
    duration_s: float
    problems: list[VerifyProblemOut] = Field(description="Each missing or corrupt artifact")
    errors: list[dict[str, str]] = Field(description="Artifacts that could not be read")


class TaskInputRef(BaseModel):
    """An input in another session: reference data such as golden images."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    session_id: str = Field(pattern=f"^{SESSION_ID_RE.pattern}$")
    artifact_id: str = Field(max_length=36)


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    processor: str = Field(min_length=1, max_length=100)
    inputs: list[Annotated[str, Field(max_length=36)] | TaskInputRef] = Field(
        default_factory=list,
        max_length=1000,
        description="Artifact IDs of this session, or {session_id, artifact_id} elsewhere",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    max_attempts: int | None = Field(None, ge=1, le=100)
    reference_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Token of each other session the inputs name, by session ID "
        "(not needed with an admin key)",
    )


class TaskProgress(BaseModel):
    done: int
    total: int | None


class TaskOutputOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    artifact_id: str
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    removed: bool = Field(description="Removed by result retention; the record remains")


class TaskOut(BaseModel):
    id: str
    session_id: str
    processor: str
    params: dict[str, Any]
    inputs: list[TaskInputRef]
    state: str
    progress: TaskProgress
    result: dict[str, Any] | None
    error: str | None
    outputs: list[TaskOutputOut]
    attempts: int
    max_attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, task: Any) -> TaskOut:
        return cls(
            id=task.id,
            session_id=task.session_id,
            processor=task.processor,
            params=task.params,
            inputs=[TaskInputRef.model_validate(i) for i in task.inputs],
            state=task.state,
            progress=TaskProgress(done=task.progress_done, total=task.progress_total),
            result=task.result,
            error=task.error,
            outputs=[TaskOutputOut.model_validate(o) for o in task.outputs],
            attempts=task.attempts,
            max_attempts=task.max_attempts,
            worker=task.worker,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
        )


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: str = Field(min_length=1, max_length=200, description="A name, for logs and stats")
    processors: list[Annotated[str, Field(max_length=100)]] = Field(min_length=1, max_length=100)
    ttl_s: float | None = Field(None, gt=0, description="Claim length; renew with heartbeats")


class ClaimOut(BaseModel):
    task: TaskOut
    claim_id: str = Field(description="Send as the Ephemera-Claim header on every task call")
    claimed_until: datetime
    inputs: list[ArtifactOut]


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    progress: TaskProgress | None = None
    ttl_s: float | None = Field(None, gt=0)


class HeartbeatOut(BaseModel):
    claimed_until: datetime


class CompleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: dict[str, Any] = Field(default_factory=dict)


class FailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str = Field(min_length=1, max_length=2000)
    retry: bool = Field(False, description="Queue again while attempts remain")


class ProcessorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    description: str | None
    params_schema: dict[str, Any] | None = Field(
        description="JSON schema of the task's params; null for an external processor"
    )
    external: bool = Field(description="Run only by external workers, which check its params")


class ProcessorList(BaseModel):
    items: list[ProcessorOut]


class ImportOriginOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    source: str = Field(description="The root folder the file was imported from")
    path: str = Field(description="The file's POSIX path relative to the source")
    size: int
    mtime_ns: int


class ImportEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    origin: ImportOriginOut
    artifact_id: str
    sha256: str
    replaces: str | None = Field(description="The artifact of the previous version of the path")
    task_id: str | None = Field(description="The follow-up task, once submitted")
    imported_at: datetime


class ImportOut(BaseModel):
    created: bool = Field(description="False when the ledger already held this file version")
    entry: ImportEntryOut
    artifact: ArtifactOut | None = Field(description="None once the artifact has been deleted")


class ImportPage(BaseModel):
    items: list[ImportEntryOut]
    next_cursor: str | None


class FollowUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    processor: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)
