"""What the cleanup page remembers: previews (dry runs, with every item they chose) and real
runs going on in background threads, each under a random ID.

A real run repeats a preview's operation with the same parameters; it cannot be told to
delete exactly the previewed items (the library selects by rule, at the moment it runs), so
its report is compared with the preview item by item and any difference is shown. That is
how "run exactly what was previewed" stays honest when the store changed in between.

The memory is this process's alone and holds only the last few previews and runs: a server
restart or another replica does not know them (their audit entries remain).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Generic, TypeVar

from ephemera.cleanup.records import (
    CleanupItem,
    CleanupReport,
    CleanupRequest,
    ItemKind,
    Operation,
    ProtectedItem,
    ProtectedReason,
    Rule,
)
from ephemera.errors import EphemeraError, NotFound
from ephemera.store import Store

log = logging.getLogger("ephemera.console")

# How many previews and runs are kept (each with its items) before the oldest is forgotten.
KEEP = 20
# The items one summary keeps (deleted ones, and as many spared ones): its groups count every
# item, but a store with millions to delete must not keep them all in memory, twenty times over.
ITEMS_KEPT = 10_000

# Which parameters each operation reads; the others are dropped, so a run carries only what
# it uses and the report shows no parameter that did nothing.
APPLIES: dict[Operation, tuple[str, ...]] = {
    Operation.EXPIRED: (),
    Operation.IDLE_SESSIONS: ("hours_old",),
    Operation.SESSION: ("session_id",),
    Operation.OLD_RESULTS: ("days_old",),
    Operation.ORPHANED: ("purge_missing",),
    Operation.QUOTA: (),
    Operation.ALL: ("hours_old", "days_old", "purge_missing"),
}

WHY: dict[Rule, str] = {
    Rule.EXPIRED: "temporary artifacts past their expiry",
    Rule.OLD_RESULTS: "outputs of finished tasks older than the result retention",
    Rule.IDLE: "sessions past their idle timeout or their max age",
    Rule.ONE: "the session asked for",
    Rule.QUOTA: "least recently active sessions evicted to bring storage under the low-water mark",
    Rule.CLOSING: "sessions whose close did not finish",
    Rule.STAGING_LEFTOVER: "bytes an interrupted upload left in staging",
    Rule.STALE_PENDING: "uploads that never completed, past the orphan grace period",
    Rule.NO_RECORD: "stored bytes no record refers to, past the orphan grace period",
    Rule.INTERRUPTED_DELETE: "artifacts whose deletion was interrupted",
    Rule.MISSING_BYTES: "ready records whose bytes are lost (purge missing)",
    Rule.EXPIRED_UPLOAD: "resumable uploads past their expiry",
}

# Why a protected item was spared, in words; a lease covers a little more than the item's
# own name (see ProtectedReason), so the words depend on what the item is.
SPARED_BECAUSE: dict[tuple[ItemKind, ProtectedReason], str] = {
    (ItemKind.ARTIFACT, ProtectedReason.LEASED): "a valid lease names the artifact or its session",
    (ItemKind.SESSION, ProtectedReason.LEASED): (
        "a valid lease names the session or one of its artifacts"
    ),
    (ItemKind.SESSION, ProtectedReason.RETAINED): (
        "the session holds artifacts retained until later"
    ),
}


def spared_because(item: ProtectedItem) -> str:
    return SPARED_BECAUSE.get((item.kind, item.reason), str(item.reason))


@dataclass(frozen=True)
class CleanupParams:
    """An operation and the parameters it reads (checked by the library's own rules)."""

    operation: Operation
    hours_old: float | None = None
    days_old: float | None = None
    session_id: str | None = None
    purge_missing: bool = False

    @classmethod
    def checked(
        cls,
        operation: str,
        *,
        hours_old: float | None = None,
        days_old: float | None = None,
        session_id: str | None = None,
        purge_missing: bool = False,
    ) -> CleanupParams:
        """InvalidInput for what the library would refuse; parameters the operation does not
        read are dropped."""
        request = CleanupRequest.checked(
            operation,
            hours_old=hours_old,
            days_old=days_old,
            session_id=session_id or None,
            purge_missing=purge_missing,
        )
        used = APPLIES[request.operation]
        return cls(
            request.operation,
            hours_old=request.hours_old if "hours_old" in used else None,
            days_old=request.days_old if "days_old" in used else None,
            session_id=request.session_id if "session_id" in used else None,
            purge_missing=request.purge_missing if "purge_missing" in used else False,
        )

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "hours_old": self.hours_old,
            "days_old": self.days_old,
            "session_id": self.session_id,
            "purge_missing": self.purge_missing,
        }

    def fields(self) -> list[tuple[str, str]]:
        """As form fields (hidden in the run form, a query for "change the parameters")."""
        values = [("operation", str(self.operation))]
        for name in ("hours_old", "days_old", "session_id"):
            value = getattr(self, name)
            if value is not None:
                values.append((name, _number(value) if isinstance(value, float) else value))
        if self.purge_missing:
            values.append(("purge_missing", "true"))
        return values

    def described(self) -> list[tuple[str, str]]:
        """The parameters, for people (an empty list: the operation's defaults)."""
        names = {
            "hours_old": "Idle for hours",
            "days_old": "Results older than days",
            "session_id": "Session",
            "purge_missing": "Purge missing",
        }
        return [(names[name], value) for name, value in self.fields()[1:]]


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


@dataclass(frozen=True)
class RuleGroup:
    operation: str
    rule: str
    why: str
    count: int
    bytes: int


@dataclass(frozen=True)
class Spared:
    """A protected item as the pages list it: the operation that selected it, and why not."""

    operation: str
    item: ProtectedItem
    because: str


@dataclass(frozen=True)
class Summary:
    """A cleanup report as the pages show it: its items grouped by the rule that chose them."""

    count: int
    bytes: int
    skipped_protected: int
    errors: list[dict[str, str]]
    duration_s: float
    groups: list[RuleGroup]
    items: list[tuple[str, CleanupItem]]  # (operation, item); the first ITEMS_KEPT
    items_total: int
    protected: list[Spared]  # the first ITEMS_KEPT; ``skipped_protected`` counts them all

    @classmethod
    def of(cls, report: CleanupReport) -> Summary:
        items = [(str(part.operation), i) for part in _parts(report) for i in part.items]
        groups: dict[tuple[str, str], list[int]] = {}
        for operation, item in items:
            counted = groups.setdefault((operation, str(item.rule)), [0, 0])
            counted[0] += 1
            counted[1] += item.size
        return cls(
            count=report.deleted_count,
            bytes=report.deleted_size_bytes,
            skipped_protected=report.skipped_protected,
            errors=list(report.errors),
            duration_s=report.duration_s,
            groups=[
                RuleGroup(op, rule, WHY.get(Rule(rule), rule), n, size)
                for (op, rule), (n, size) in groups.items()
            ],
            items=items[:ITEMS_KEPT],
            items_total=len(items),
            protected=list(
                islice(
                    (
                        Spared(str(part.operation), p, spared_because(p))
                        for part in _parts(report)
                        for p in part.protected
                    ),
                    ITEMS_KEPT,
                )
            ),
        )

    @property
    def complete(self) -> bool:
        return self.items_total == len(self.items)

    def keys(self) -> set[tuple[str, str]]:
        return {(str(item.kind), item.id) for _, item in self.items}


def _parts(report: CleanupReport) -> list[CleanupReport]:
    return report.reports if report.operation == Operation.ALL else [report]


@dataclass
class Preview:
    id: str
    params: CleanupParams
    actor: str
    at: datetime
    summary: Summary


@dataclass
class Run:
    """A real run in a background thread; ``progress`` is called by the cleanup engine."""

    id: str
    params: CleanupParams
    actor: str
    started_at: datetime
    preview: Preview | None
    operation: str = ""  # the pass going on (``all`` runs several)
    examined: dict[str, int] = field(default_factory=dict)
    finished_at: datetime | None = None
    summary: Summary | None = None
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def progress(self, operation: str, examined: int) -> None:
        with self._lock:
            self.operation = operation
            self.examined[operation] = self.examined.get(operation, 0) + examined

    def progress_now(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.examined.items())

    def finish(self, summary: Summary | None, error: str | None = None) -> None:
        with self._lock:
            self.summary, self.error = summary, error
            self.finished_at = datetime.now(UTC)

    def elapsed_s(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return (end - self.started_at).total_seconds()

    def comparable(self) -> bool:
        """Whether the run can be compared with its preview item by item (both kept every
        item: see ``ITEMS_KEPT``)."""
        return (
            self.summary is not None
            and self.preview is not None
            and self.summary.complete
            and self.preview.summary.complete
        )

    def unexpected(self) -> list[tuple[str, CleanupItem]]:
        """Deleted by the run though the preview did not list them."""
        if self.summary is None or self.preview is None:
            return []
        previewed = self.preview.summary.keys()
        return [(op, i) for op, i in self.summary.items if (str(i.kind), i.id) not in previewed]

    def spared(self) -> list[tuple[str, CleanupItem]]:
        """Listed by the preview but not deleted by the run."""
        if self.summary is None or self.preview is None:
            return []
        deleted = self.summary.keys()
        return [
            (op, i) for op, i in self.preview.summary.items if (str(i.kind), i.id) not in deleted
        ]


T = TypeVar("T")


class _Recent(Generic[T]):
    """The last ``KEEP`` entries by ID."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str, entry: T) -> None:
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > KEEP:
                self._entries.popitem(last=False)

    def get(self, key: str, what: str) -> T:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise NotFound(f"this server does not know that {what} (it keeps the last {KEEP})")
        return entry

    def newest_first(self) -> list[T]:
        with self._lock:
            return list(reversed(self._entries.values()))


class CleanupRuns:
    """Previews and runs of one console."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.previews: _Recent[Preview] = _Recent()
        self.runs: _Recent[Run] = _Recent()

    def preview(self, params: CleanupParams, actor: str) -> Preview:
        """A dry run now, with its items (audited by the library, like every run)."""
        report = self.store.cleanup(
            params.operation, dry_run=True, details=True, actor=actor, **params.as_kwargs()
        )
        made = Preview(
            secrets.token_urlsafe(16), params, actor, datetime.now(UTC), Summary.of(report)
        )
        self.previews.add(made.id, made)
        return made

    def start(self, params: CleanupParams, actor: str, preview: Preview | None) -> Run:
        """Start the real run in a thread of its own and return at once."""
        run = Run(secrets.token_urlsafe(16), params, actor, datetime.now(UTC), preview)
        self.runs.add(run.id, run)
        thread = threading.Thread(
            target=self._work, args=(run,), name=f"console-cleanup-{params.operation}", daemon=True
        )
        thread.start()
        return run

    def _work(self, run: Run) -> None:
        try:
            report = self.store.cleanup(
                run.params.operation,
                details=True,
                actor=run.actor,
                progress=run.progress,
                **run.params.as_kwargs(),
            )
        except EphemeraError as exc:
            run.finish(None, exc.message)
        except Exception:
            log.exception("console cleanup %s failed", run.params.operation)
            run.finish(None, "the cleanup failed unexpectedly: the server's log has the details")
        else:
            run.finish(Summary.of(report))
