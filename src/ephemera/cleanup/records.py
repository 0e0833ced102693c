"""What a cleanup is asked, what it chooses by, and what it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ephemera.errors import InvalidInput
from ephemera.ids import SESSION_ID_RE

MB = 1_000_000
MAX_HOURS = 100 * 365 * 24


class Operation(StrEnum):
    EXPIRED = "expired"
    IDLE_SESSIONS = "idle-sessions"
    SESSION = "session"
    OLD_RESULTS = "old-results"
    ORPHANED = "orphaned"
    QUOTA = "quota"
    ALL = "all"


# Order of `all`: finish and close sessions first (that removes most bytes in whole sweeps),
# then single artifacts, then whatever is left unreferenced, and the quota last, on what
# remains.
ALL_ORDER = (
    Operation.IDLE_SESSIONS,
    Operation.EXPIRED,
    Operation.OLD_RESULTS,
    Operation.ORPHANED,
    Operation.QUOTA,
)


class ItemKind(StrEnum):
    SESSION = "session"
    ARTIFACT = "artifact"
    BLOB = "blob"
    STAGED = "staged"
    PENDING = "pending"
    UPLOAD = "upload"


class Rule(StrEnum):
    """Why an item was chosen; also the reason its hook event carries."""

    EXPIRED = "expired"
    OLD_RESULTS = "old-results"
    IDLE = "idle"
    ONE = "one"
    QUOTA = "quota"
    CLOSING = "closing"
    STAGING_LEFTOVER = "staging-leftover"
    STALE_PENDING = "stale-pending"
    NO_RECORD = "no-record"
    INTERRUPTED_DELETE = "interrupted-delete"
    MISSING_BYTES = "missing-bytes"
    EXPIRED_UPLOAD = "expired-upload"


@dataclass(frozen=True, slots=True)
class CleanupItem:
    kind: ItemKind
    id: str
    session_id: str | None
    size: int
    rule: Rule

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "session_id": self.session_id,
            "size": self.size,
            "rule": self.rule,
        }


class ProtectedReason(StrEnum):
    """Why an item a rule selected was spared: what the cleanup knew when it selected it."""

    # A valid lease names it: for an artifact, the artifact or its whole session; for a
    # session, the session or any of its artifacts (a running task holds such a lease).
    LEASED = "leased"
    # The session holds artifacts retained until later (a lease, if any, is named first:
    # retention does not spare a session from the quota, a lease does).
    RETAINED = "retained"


@dataclass(frozen=True, slots=True)
class ProtectedItem:
    """An item a rule selected but a protection spared (``rule``: the rule that selected it)."""

    kind: ItemKind
    id: str
    session_id: str | None
    size: int
    rule: Rule
    reason: ProtectedReason

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "session_id": self.session_id,
            "size": self.size,
            "rule": self.rule,
            "reason": self.reason,
        }


@dataclass
class CleanupReport:
    operation: Operation
    dry_run: bool
    deleted_count: int = 0
    deleted_size_bytes: int = 0
    skipped_protected: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    duration_s: float = 0.0
    items: list[CleanupItem] = field(default_factory=list)
    protected: list[ProtectedItem] = field(default_factory=list)
    # Details: keep each item (deleted or spared), not only the counts. Off by default, so
    # the memory of a run stays flat however much it deletes.
    keep_items: bool = False
    reports: list[CleanupReport] = field(default_factory=list)
    # An incremental orphan reconciliation: which slice of the lap this run covered.
    slice: dict[str, Any] | None = None

    @property
    def deleted_size_mb(self) -> float:
        return round(self.deleted_size_bytes / MB, 3)

    def add(self, item: CleanupItem) -> None:
        self.deleted_count += 1
        self.deleted_size_bytes += item.size
        if self.keep_items:
            self.items.append(item)

    def spare(self, item: ProtectedItem) -> None:
        self.skipped_protected += 1
        if self.keep_items:
            self.protected.append(item)

    def error(self, target: str, error: str) -> None:
        self.errors.append({"target": target, "error": error})

    def absorb(self, part: CleanupReport) -> None:
        self.reports.append(part)
        self.deleted_count += part.deleted_count
        self.deleted_size_bytes += part.deleted_size_bytes
        self.skipped_protected += part.skipped_protected
        self.errors.extend(part.errors)

    def as_dict(self, details: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "operation": self.operation,
            "dry_run": self.dry_run,
            "deleted_count": self.deleted_count,
            "deleted_size_bytes": self.deleted_size_bytes,
            "deleted_size_mb": self.deleted_size_mb,
            "skipped_protected": self.skipped_protected,
            "errors": self.errors,
            "duration_s": self.duration_s,
        }
        if details:
            body["items"] = [i.as_dict() for i in self.items]
            body["protected"] = [p.as_dict() for p in self.protected]
        if self.slice is not None:
            body["slice"] = self.slice
        if self.operation == Operation.ALL:
            body["reports"] = [r.as_dict(details) for r in self.reports]
            body["totals"] = {
                k: body[k] for k in ("deleted_count", "deleted_size_bytes", "deleted_size_mb")
            } | {"skipped_protected": self.skipped_protected, "errors": len(self.errors)}
        return body

    def totals(self) -> dict[str, Any]:
        totals = {
            "deleted_count": self.deleted_count,
            "deleted_size_bytes": self.deleted_size_bytes,
            "skipped_protected": self.skipped_protected,
            "errors": len(self.errors),
            "first_errors": self.errors[:10],
            "duration_s": self.duration_s,
        }
        if self.slice is not None:
            totals["slice"] = self.slice
        return totals


@dataclass(frozen=True, slots=True)
class CleanupRequest:
    operation: Operation
    dry_run: bool = False
    hours_old: float | None = None
    days_old: float | None = None
    session_id: str | None = None
    purge_missing: bool = False
    details: bool = False
    # The scheduler's tick: orphan reconciliation does one slice of its lap, not the store.
    incremental: bool = False

    @classmethod
    def checked(
        cls,
        operation: str,
        *,
        dry_run: bool = False,
        hours_old: float | None = None,
        days_old: float | None = None,
        session_id: str | None = None,
        purge_missing: bool = False,
        details: bool = False,
        incremental: bool = False,
    ) -> CleanupRequest:
        """The request, or InvalidInput before anything is touched."""
        try:
            op = Operation(operation)
        except ValueError:
            raise InvalidInput(f"unknown cleanup operation {operation!r}") from None
        if op == Operation.SESSION and (
            session_id is None or not SESSION_ID_RE.fullmatch(session_id)
        ):
            raise InvalidInput("the session operation needs a valid session id")
        for name, value in (("hours_old", hours_old), ("days_old", days_old)):
            if value is not None and not (0 <= value <= MAX_HOURS):
                raise InvalidInput(f"{name} must be between 0 and {MAX_HOURS}")
        return cls(
            op, dry_run, hours_old, days_old, session_id, purge_missing, details, incremental
        )

    def params(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "dry_run": self.dry_run,
                "hours_old": self.hours_old,
                "days_old": self.days_old,
                "session_id": self.session_id,
                "purge_missing": self.purge_missing or None,
                "incremental": self.incremental or None,
            }.items()
            if v is not None
        }


# Told the operation running and how many candidates it has just examined.
Progress = Callable[[str, int], None]
