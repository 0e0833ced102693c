"""Domain records: frozen, built from rows by the catalog, handed out by the Store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SessionState(StrEnum):
    OPEN = "open"
    CLOSING = "closing"


class ArtifactState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    DELETING = "deleting"


class StorageClass(StrEnum):
    PERSISTENT = "persistent"
    TEMPORARY = "temporary"


MAX_TIMEOUT_S = 10 * 365 * 86400
"""The longest timeout, max age or expiry anything may be given: 10 years, in seconds."""

INT64_MAX = 2**63 - 1
"""The largest value a BIGINT column holds: the bound of an imported file's size and mtime_ns."""


def session_deadline(
    last_activity_at: datetime,
    created_at: datetime,
    idle_timeout_s: int | None,
    max_age_s: int | None,
) -> datetime | None:
    """When a session stops answering: the earlier of its idle and max-age limits."""
    deadlines = []
    if idle_timeout_s is not None:
        deadlines.append(last_activity_at + timedelta(seconds=idle_timeout_s))
    if max_age_s is not None:
        deadlines.append(created_at + timedelta(seconds=max_age_s))
    return min(deadlines) if deadlines else None


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    label: str | None
    metadata: dict[str, Any]
    state: SessionState
    created_at: datetime
    last_activity_at: datetime
    idle_timeout_s: int | None
    max_age_s: int | None
    expires_at: datetime | None
    artifact_count: int = 0
    total_bytes: int = 0


@dataclass(frozen=True, slots=True)
class CreatedSession:
    session: Session
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Artifact:
    id: str
    session_id: str
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    storage_class: StorageClass
    state: ArtifactState
    created_at: datetime
    expires_at: datetime | None
    retain_until: datetime | None
    producer: str | None = None
    # Set by verification: "corrupt" or "missing" (None: never found wrong), and when the
    # bytes last hashed right.
    integrity: str | None = None
    integrity_error: str | None = None
    verified_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A time-limited claim: on the whole session, or on the named artifacts only."""

    id: str
    session_id: str
    holder: str
    artifact_ids: tuple[str, ...]
    created_at: datetime
    expires_at: datetime

    def is_valid(self, now: datetime) -> bool:
        return now < self.expires_at


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    params: dict[str, Any]
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CloseReport:
    closed: bool
    duration_s: float
    artifact_count: int
    deleted_bytes: int
    storage_removed: bool


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


class KeyRole(StrEnum):
    """What a key opens: ``admin`` everything, ``worker`` the worker API only, ``client``
    creating sessions only (the new session's token is what opens it)."""

    ADMIN = "admin"
    WORKER = "worker"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class AdminKey:
    """A key of any role (the table and the name predate the other roles)."""

    name: str
    created_at: datetime
    last_used_at: datetime | None
    role: KeyRole = KeyRole.ADMIN
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (TaskState.PENDING, TaskState.RUNNING)


@dataclass(frozen=True, slots=True)
class TaskInput:
    session_id: str
    artifact_id: str


@dataclass(frozen=True, slots=True)
class TaskOutput:
    artifact_id: str
    name: str
    kind: str
    content_type: str
    size: int
    sha256: str
    removed: bool = False


@dataclass(frozen=True, slots=True)
class NewOutput:
    """A task output held in memory, for :meth:`Store.put_task_outputs`."""

    name: str
    data: bytes = field(repr=False)
    kind: str = "output"
    content_type: str | None = None
    # Chosen by the caller when it must name the artifact before it is stored.
    artifact_id: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    session_id: str
    processor: str
    params: dict[str, Any]
    inputs: tuple[TaskInput, ...]
    state: TaskState
    progress_done: int
    progress_total: int | None
    result: dict[str, Any] | None
    error: str | None
    outputs: tuple[TaskOutput, ...]
    attempts: int
    max_attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A running attempt of a task, handed to one worker."""

    task: Task
    claim_id: str = field(repr=False)
    claimed_until: datetime
    inputs: tuple[Artifact, ...]


@dataclass(frozen=True, slots=True)
class ImportOrigin:
    """Where an imported file came from, as the import ledger keys it.

    ``source`` names the root folder (by default ``host:/absolute/path``), ``path`` is the
    file's POSIX path relative to it; ``size`` and ``mtime_ns`` tell one version of the file
    from the next. The same origin is imported into a session at most once.
    """

    source: str
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ImportEntry:
    """One line of a session's import ledger: a file version and the artifact it became.

    ``replaces`` is the artifact of the previous version of the same path, if any;
    ``task_id`` the follow-up task submitted for it (``import --then``), once submitted. The
    entry outlives its artifact (deleting the artifact does not make the file importable
    again); it goes with its session.
    """

    session_id: str
    origin: ImportOrigin
    artifact_id: str
    sha256: str
    replaces: str | None
    imported_at: datetime
    task_id: str | None


@dataclass(frozen=True, slots=True)
class FollowUp:
    """The task to submit for each imported file: ``processor`` with ``params``, the file's
    artifact as its only input."""

    processor: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Imported:
    """What importing one file did: ``created`` is False when the ledger already held it."""

    entry: ImportEntry
    created: bool


@dataclass(frozen=True, slots=True)
class LinkKey:
    """A key that signs download links: the newest one not revoked signs, every one not
    revoked verifies. The secret never leaves the catalog and the store."""

    id: str
    created_at: datetime
    revoked_at: datetime | None
    secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a session's event log; ``id`` orders the log and resumes a stream."""

    id: int
    session_id: str
    type: str
    data: dict[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class ConsoleLogin:
    """A browser signed in to the web console: an operator with a key (``admin``, or
    ``worker`` for a read-only view) or a session's token holder (``session``, that session's
    workspace only). ``csrf`` is the token its forms carry."""

    id: str
    role: str
    actor: str
    session_id: str | None
    csrf: str
    created_at: datetime
    expires_at: datetime
    # The hash of the credential it was made with (a key's, or the session token's).
    secret_hash: str = field(default="", repr=False)

    @property
    def audit_actor(self) -> str:
        """Who its actions are recorded as: a key's role and name, as the API records a
        key's actions (``admin:default``), or ``session:<id>``."""
        return self.actor if self.role == "session" else f"{self.role}:{self.actor}"

    @property
    def can_change(self) -> bool:
        """Operators with an admin key change things; a worker key only looks."""
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class UsageSample:
    """The store's size at one scheduler tick."""

    at: datetime
    sessions: int
    artifacts: int
    bytes: int
    temporary_bytes: int
    tasks_active: int
