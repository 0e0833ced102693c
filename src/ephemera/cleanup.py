"""The cleanup engine: each operation is a plain function over a Store.

Every operation walks its candidates in batches (set-based queries on indexes, so cost grows
with what is selected, not with what is stored) and, for each batch, either reports (dry run)
or acts. Dry and real runs share this one path and differ only at the act step, so a dry run
reports exactly what a real run at the same moment would delete (guarantee 6).

Acting follows one protocol everywhere: mark (a conditional state change that re-checks the
rule and every lease in the same statement), remove bytes, remove records. A record is
counted by the run whose delete statement removed it, so two runs at once never double-count,
and a run interrupted anywhere leaves marked items that the next run finishes (guarantee 7).
Per-item errors are collected in the report and never stop the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ephemera.blobs import artifact_key, session_prefix
from ephemera.catalog import ArtifactRule, ArtifactSweep, Candidate, SessionRule, SessionSweep
from ephemera.errors import EphemeraError, InvalidInput, NotFound
from ephemera.hooks import ArtifactDeleted, SessionClosed
from ephemera.ids import SESSION_ID_RE
from ephemera.models import ArtifactState

if TYPE_CHECKING:
    from ephemera.store import Store

log = logging.getLogger("ephemera.cleanup")

OPERATIONS = ("expired", "idle-sessions", "session", "old-results", "orphaned", "quota", "all")
# Order of `all`: finish and close sessions first (that removes most bytes in whole sweeps),
# then single artifacts, then whatever is left unreferenced, and the quota last, on what
# remains.
ALL_ORDER = ("idle-sessions", "expired", "old-results", "orphaned", "quota")
BATCH = 500
RECONCILE_CHUNK = 64
MB = 1_000_000


@dataclass
class CleanupItem:
    kind: str  # "session", "artifact", "blob", "staged", "pending"
    id: str
    session_id: str | None
    size: int
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "session_id": self.session_id,
            "size": self.size,
            "rule": self.rule,
        }


@dataclass
class CleanupReport:
    operation: str
    dry_run: bool
    deleted_count: int = 0
    deleted_size_bytes: int = 0
    skipped_protected: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    duration_s: float = 0.0
    items: list[CleanupItem] = field(default_factory=list)
    keep_items: bool = False
    reports: list[CleanupReport] = field(default_factory=list)

    @property
    def deleted_size_mb(self) -> float:
        return round(self.deleted_size_bytes / MB, 3)

    def add(self, item: CleanupItem) -> None:
        self.deleted_count += 1
        self.deleted_size_bytes += item.size
        if self.keep_items:
            self.items.append(item)

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
        if self.operation == "all":
            body["reports"] = [r.as_dict(details) for r in self.reports]
            body["totals"] = {
                k: body[k] for k in ("deleted_count", "deleted_size_bytes", "deleted_size_mb")
            } | {"skipped_protected": self.skipped_protected, "errors": len(self.errors)}
        return body

    def totals(self) -> dict[str, Any]:
        return {
            "deleted_count": self.deleted_count,
            "deleted_size_bytes": self.deleted_size_bytes,
            "skipped_protected": self.skipped_protected,
            "errors": len(self.errors),
            "first_errors": self.errors[:10],
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True)
class CleanupRequest:
    operation: str
    dry_run: bool = False
    hours_old: float | None = None
    days_old: float | None = None
    session_id: str | None = None
    purge_missing: bool = False
    details: bool = False

    def params(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "dry_run": self.dry_run,
                "hours_old": self.hours_old,
                "days_old": self.days_old,
                "session_id": self.session_id,
                "purge_missing": self.purge_missing or None,
            }.items()
            if v is not None
        }

    def check(self) -> None:
        if self.operation not in OPERATIONS:
            raise InvalidInput(f"unknown cleanup operation {self.operation!r}")
        if self.operation == "session" and (
            self.session_id is None or not SESSION_ID_RE.fullmatch(self.session_id)
        ):
            raise InvalidInput("the session operation needs a valid session id")
        for name in ("hours_old", "days_old"):
            value = getattr(self, name)
            if value is not None and not (0 <= value <= 100 * 365 * 24):
                raise InvalidInput(f"{name} must be between 0 and 876000")


Progress = Callable[[str, int], None]


class Cleaner:
    """One cleanup run at one instant ``now``: every rule is evaluated at that instant."""

    def __init__(
        self,
        store: Store,
        request: CleanupRequest,
        *,
        now: datetime | None = None,
        progress: Progress | None = None,
        batch_size: int = BATCH,
    ) -> None:
        self.store = store
        self.request = request
        self.now = now or store.clock.now()
        self.dry_run = request.dry_run
        self.progress = progress or (lambda _op, _n: None)
        self.batch_size = batch_size
        # A dry run deletes nothing, so later passes of `all` would see again what earlier
        # ones report. It remembers what a real run would have removed by then, and skips it.
        self._dry_sessions: set[str] = set()
        self._dry_artifacts: set[str] = set()
        self._dry_freed = 0
        self._dry_freed_in: dict[str, int] = {}

    def _dry_remove(self, session_id: str, artifact_id: str, size: int) -> None:
        """Record, in a dry run, an artifact a real run would have removed by now."""
        self._dry_artifacts.add(artifact_id)
        self._dry_freed += size
        self._dry_freed_in[session_id] = self._dry_freed_in.get(session_id, 0) + size

    def _gone_in_dry_run(self, candidate: Candidate) -> bool:
        return candidate.session_id in self._dry_sessions or candidate.id in self._dry_artifacts

    def run(self) -> CleanupReport:
        op = self.request.operation
        if op == "all":
            report = self._report("all")
            started = time.perf_counter()
            for part in ALL_ORDER:
                report.absorb(self._run_one(part))
            report.duration_s = round(time.perf_counter() - started, 6)
        else:
            report = self._run_one(op)
        return report

    def _report(self, operation: str) -> CleanupReport:
        return CleanupReport(operation, self.dry_run, keep_items=self.request.details)

    def _run_one(self, operation: str) -> CleanupReport:
        report = self._report(operation)
        started = time.perf_counter()
        handler = {
            "expired": self.expired,
            "idle-sessions": self.idle_sessions,
            "session": self.one_session,
            "old-results": self.old_results,
            "orphaned": self.orphaned,
            "quota": self.quota,
        }[operation]
        handler(report)
        report.duration_s = round(time.perf_counter() - started, 6)
        return report

    # -- artifacts ------------------------------------------------------------------------

    def expired(self, report: CleanupReport) -> None:
        self._artifact_pass(report, ArtifactSweep(ArtifactRule.EXPIRED, self.now, self.now))

    def old_results(self, report: CleanupReport) -> None:
        days = self.request.days_old
        if days is None:
            days = self.store.settings.result_retention_days
        cutoff = self.now - timedelta(days=days)
        self._artifact_pass(report, ArtifactSweep(ArtifactRule.OLD_RESULTS, self.now, cutoff))

    def _artifact_pass(self, report: CleanupReport, sweep: ArtifactSweep) -> None:
        catalog = self.store.catalog
        after: tuple[Any, str] | None = None
        while batch := catalog.artifact_candidates(sweep, after, self.batch_size):
            after = (batch[-1].order_key, batch[-1].id)
            doomed = []
            for candidate in batch:
                if self._gone_in_dry_run(candidate):
                    continue
                if candidate.leased:
                    report.skipped_protected += 1
                else:
                    doomed.append(candidate)
            if self.dry_run:
                for c in doomed:
                    report.add(CleanupItem("artifact", c.id, c.session_id, c.size, sweep.rule))
                    self._dry_remove(c.session_id, c.id, c.size)
            else:
                claimed = catalog.claim_artifacts(sweep, [c.id for c in doomed])
                self._delete_artifacts(report, claimed, sweep.rule)
            self.progress(report.operation, len(batch))

    def _delete_artifacts(
        self,
        report: CleanupReport,
        claimed: list[Candidate],
        rule: str,
        *,
        frees_bytes: bool = True,
    ) -> None:
        """Bytes first, then records: a crash in between leaves ``deleting`` records only."""
        removed, failed = self.store.remove_deleting([(c.session_id, c.id) for c in claimed])
        for artifact_id, error in failed.items():
            report.error(f"artifact {artifact_id}", error)
        for session_id, artifact_id, size in removed:
            size = size if frees_bytes else 0
            report.add(CleanupItem("artifact", artifact_id, session_id, size, rule))
            # Told as each batch is committed: memory stays flat however much is deleted.
            self.store.hooks.artifact_deleted(
                ArtifactDeleted(session_id, artifact_id, size, rule, self.now)
            )

    # -- sessions -------------------------------------------------------------------------

    def idle_sessions(self, report: CleanupReport) -> None:
        hours = self.request.hours_old
        idle_before = self.now - timedelta(hours=hours) if hours is not None else None
        self._session_pass(
            report, SessionSweep(SessionRule.IDLE, self.now, idle_before=idle_before)
        )

    def one_session(self, report: CleanupReport) -> None:
        assert self.request.session_id is not None
        sweep = SessionSweep(SessionRule.ONE, self.now, session_id=self.request.session_id)
        self._session_pass(report, sweep)

    def _session_pass(self, report: CleanupReport, sweep: SessionSweep) -> None:
        after: str | None = None
        while batch := self.store.catalog.session_candidates(sweep, after, self.batch_size):
            after = batch[-1].id
            for candidate in batch:
                self._close(report, candidate, sweep)
            self.progress(report.operation, len(batch))

    def _close(self, report: CleanupReport, candidate: Candidate, sweep: SessionSweep) -> bool:
        """Close one selected session (or report it); True if it counts as deleted."""
        rule = "closing" if candidate.state == "closing" else sweep.rule
        if candidate.id in self._dry_sessions:
            return False
        if candidate.leased or candidate.retained:
            report.skipped_protected += 1
            return False
        catalog = self.store.catalog
        if self.dry_run:
            _, size = catalog.session_usage_all(candidate.id)
            size -= self._dry_freed_in.get(candidate.id, 0)  # already gone in a real run
            report.add(CleanupItem("session", candidate.id, candidate.id, size, rule))
            self._dry_sessions.add(candidate.id)
            self._dry_freed += size
            return True
        one = SessionSweep(sweep.rule, sweep.now, sweep.idle_before, candidate.id)
        if not catalog.claim_session(one):
            return False
        try:
            self.store.blobs.delete_prefix(session_prefix(candidate.id))
        except EphemeraError as exc:
            report.error(f"session {candidate.id}", exc.message)
            return False
        dropped = catalog.drop_session(candidate.id)
        if dropped is None:
            return False
        count, size = dropped
        report.add(CleanupItem("session", candidate.id, candidate.id, size, rule))
        self.store.hooks.session_closed(SessionClosed(candidate.id, count, size, rule, self.now))
        return True

    # -- quota ----------------------------------------------------------------------------

    def quota(self, report: CleanupReport) -> None:
        """Above the high-water mark, evict the least recently active unleased sessions."""
        settings = self.store.settings
        high = settings.quota_high_water_bytes
        if high is None:
            return
        low = settings.quota_low_water_bytes if settings.quota_low_water_bytes is not None else high
        used = self.store.catalog.stored_bytes() - self._dry_freed
        if used <= high:
            return
        after: tuple[datetime, str] | None = None
        while used > low:
            batch = self.store.catalog.eviction_candidates(self.now, after, self.batch_size)
            if not batch:
                break
            after = (batch[-1].order_key, batch[-1].id)
            for candidate in batch:
                if used <= low:
                    break
                sweep = SessionSweep(SessionRule.QUOTA, self.now, session_id=candidate.id)
                before = report.deleted_size_bytes
                self._close(report, candidate, sweep)
                used -= report.deleted_size_bytes - before
            self.progress(report.operation, len(batch))

    # -- orphans --------------------------------------------------------------------------

    def orphaned(self, report: CleanupReport) -> None:
        cutoff = self.now - timedelta(seconds=self.store.settings.orphan_grace_s)
        self._staged(report, cutoff)
        self._stale_pending(report, cutoff)
        self._reconcile(report, cutoff)
        if not self.dry_run:
            # Expired lease rows protect nothing: bookkeeping, not data, so not reported.
            self.store.catalog.purge_expired_leases(self.now)

    def _staged(self, report: CleanupReport, cutoff: datetime) -> None:
        blobs = self.store.blobs
        for staged in blobs.list_staged():
            if staged.modified_at >= cutoff:
                continue  # an upload still in flight
            if not self.dry_run:
                try:
                    blobs.delete_staged(staged.name)
                except EphemeraError as exc:
                    report.error(f"staged {staged.name}", exc.message)
                    continue
            report.add(CleanupItem("staged", staged.name, None, staged.size, "staging-leftover"))

    def _stale_pending(self, report: CleanupReport, cutoff: datetime) -> None:
        catalog = self.store.catalog
        after: tuple[datetime, str] | None = None
        while batch := catalog.stale_pending(cutoff, after, self.batch_size):
            after = (batch[-1].order_key, batch[-1].id)
            batch = [c for c in batch if not self._gone_in_dry_run(c)]
            if self.dry_run:
                for c in batch:
                    report.add(CleanupItem("pending", c.id, c.session_id, 0, "stale-pending"))
                continue
            gone = []
            for c in batch:
                try:
                    # An upload that died between its commit and its record keeps its bytes.
                    self.store.blobs.delete(artifact_key(c.session_id, c.id))
                    gone.append(c.id)
                except EphemeraError as exc:
                    report.error(f"artifact {c.id}", exc.message)
            owners = {c.id: c.session_id for c in batch}
            for artifact_id in catalog.drop_pending(gone, cutoff):
                report.add(
                    CleanupItem("pending", artifact_id, owners[artifact_id], 0, "stale-pending")
                )
            self.progress(report.operation, len(batch))

    def _reconcile(self, report: CleanupReport, cutoff: datetime) -> None:
        """Merge the stored sessions with the recorded ones, then each session's contents.

        Both sides come in ID order, a batch at a time, so memory stays flat however large
        the store is and the database is read through its indexes.
        """
        listed = self.store.blobs.list_children("sessions/")
        recorded = self._recorded_sessions()
        chunk: list[tuple[str, bool]] = []
        for session_id, on_disk, in_db in _merge(listed, recorded):
            if session_id in self._dry_sessions:
                continue  # closed by an earlier pass of this (dry) run
            if not SESSION_ID_RE.fullmatch(session_id) or (on_disk and not in_db):
                self._orphan_tree(report, session_id, cutoff)
                self.progress(report.operation, 1)
                continue
            chunk.append((session_id, on_disk))
            if len(chunk) == RECONCILE_CHUNK:
                self._reconcile_sessions(report, chunk, cutoff)
                chunk = []
        self._reconcile_sessions(report, chunk, cutoff)

    def _reconcile_sessions(
        self, report: CleanupReport, chunk: list[tuple[str, bool]], cutoff: datetime
    ) -> None:
        # One query for the records of a whole chunk of sessions.
        records = self.store.catalog.artifact_states([sid for sid, _ in chunk])
        for session_id, on_disk in chunk:
            self._reconcile_session(report, session_id, cutoff, on_disk, records[session_id])
        self.progress(report.operation, len(chunk))

    def _recorded_sessions(self) -> Iterator[str]:
        after: str | None = None
        while batch := self.store.catalog.session_ids(after, self.batch_size * 4):
            yield from batch
            after = batch[-1]

    def _orphan_tree(self, report: CleanupReport, session_id: str, cutoff: datetime) -> None:
        """Bytes of a session with no record at all: every old one goes."""
        blobs = self.store.blobs
        prefix = f"sessions/{session_id}/"
        stats = list(_safe_list(blobs, prefix, report))
        old = [s for s in stats if s.modified_at < cutoff]
        for stat in old:
            report.add(CleanupItem("blob", stat.key, session_id, stat.size, "no-record"))
        if self.dry_run or not old:
            return
        try:
            if len(old) == len(stats):
                blobs.delete_prefix(prefix)  # one sweep, and no empty folder left behind
            else:
                for stat in old:
                    blobs.delete(stat.key)
        except EphemeraError as exc:
            report.error(f"session {session_id}", exc.message)

    def _reconcile_session(
        self,
        report: CleanupReport,
        session_id: str,
        cutoff: datetime,
        on_disk: bool,
        records: dict[str, str],
    ) -> None:
        """Compare one session's stored names with its records, as sets.

        Only names without a record are stat-ed (for their age and size): a consistent
        session costs one directory listing and one indexed query.
        """
        blobs = self.store.blobs
        catalog = self.store.catalog
        prefix = session_prefix(session_id)
        try:
            names = set(blobs.list_children(prefix)) if on_disk else set()
        except EphemeraError as exc:
            report.error(f"list {prefix}", exc.message)
            return
        for name in sorted(names - records.keys()):
            try:
                stat = blobs.stat(prefix + name)
            except EphemeraError:
                continue  # gone meanwhile, or not a blob: nothing of ours to remove
            if stat.modified_at >= cutoff:
                continue
            if not self.dry_run:
                try:
                    blobs.delete(stat.key)
                except EphemeraError as exc:
                    report.error(f"blob {stat.key}", exc.message)
                    continue
            report.add(CleanupItem("blob", stat.key, session_id, stat.size, "no-record"))
        unfinished: list[Candidate] = []
        purged: list[Candidate] = []
        missing = {a for a, s in records.items() if s == ArtifactState.READY and a not in names}
        if missing:
            # Read again: an artifact that a delete (a concurrent cleanup, a close) marked and
            # removed after the first read lost no bytes, and is that delete's to finish. One
            # still ready had its bytes before the listing, so only it really lacks them.
            now = catalog.artifact_states([session_id])[session_id]
            gone = {a for a in missing if now.get(a) != ArtifactState.READY}
            records = {a: s for a, s in records.items() if a not in gone}
        for artifact_id, state in sorted(records.items()):
            if artifact_id in self._dry_artifacts:
                continue  # removed by an earlier pass of this (dry) run
            if state == ArtifactState.DELETING:
                unfinished.append(
                    Candidate(
                        id=artifact_id,
                        session_id=session_id,
                        size=0,
                        state=ArtifactState(state),
                        leased=False,
                        retained=False,
                    )
                )
            elif state == ArtifactState.READY and artifact_id not in names:
                report.error(f"artifact {artifact_id}", "integrity: ready record without bytes")
                if self.request.purge_missing and (
                    self.dry_run or catalog.mark_missing_deleting(artifact_id)
                ):
                    purged.append(
                        Candidate(
                            id=artifact_id,
                            session_id=session_id,
                            size=0,
                            state=ArtifactState(state),
                            leased=False,
                            retained=False,
                        )
                    )
        if self.dry_run:
            # Record sizes count in stored bytes (the quota) until a real run drops them.
            sizes = catalog.artifact_sizes([c.id for c in unfinished + purged])
            for c in unfinished:
                size = sizes.get(c.id, 0)
                report.add(CleanupItem("artifact", c.id, session_id, size, "interrupted-delete"))
                self._dry_remove(session_id, c.id, size)
            for c in purged:
                report.add(CleanupItem("artifact", c.id, session_id, 0, "missing-bytes"))
                self._dry_remove(session_id, c.id, sizes.get(c.id, 0))
        else:
            self._delete_artifacts(report, unfinished, "interrupted-delete")
            # Their bytes were already gone: purging frees nothing.
            self._delete_artifacts(report, purged, "missing-bytes", frees_bytes=False)


def _safe_list(blobs: Any, prefix: str, report: CleanupReport) -> Iterator[Any]:
    try:
        yield from blobs.list(prefix)
    except EphemeraError as exc:
        report.error(f"list {prefix}", exc.message)


def _merge(left: Iterator[str], right: Iterator[str]) -> Iterator[tuple[str, bool, bool]]:
    """Merge two ascending streams of names: (name, in left, in right)."""
    a = next(left, None)
    b = next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a < b):
            assert a is not None
            yield a, True, False
            a = next(left, None)
        elif a is None or b < a:
            yield b, False, True
            b = next(right, None)
        else:
            yield a, True, True
            a, b = next(left, None), next(right, None)


def run_cleanup(
    store: Store,
    request: CleanupRequest,
    *,
    actor: str = "library",
    progress: Progress | None = None,
) -> CleanupReport:
    """Run one cleanup operation, record it in the audit log, and return its report."""
    request.check()
    if request.operation == "session":
        assert request.session_id is not None
        if store.catalog.get_session_row(request.session_id) is None:
            raise NotFound(f"session {request.session_id} not found")
    report = Cleaner(store, request, progress=progress).run()
    store.record_cleanup(actor, request, report)
    store.metrics.observe(report)
    log.info(
        "cleanup %s%s by %s: %d deleted, %d bytes, %d protected, %d errors in %.3f s",
        request.operation,
        " (dry run)" if request.dry_run else "",
        actor,
        report.deleted_count,
        report.deleted_size_bytes,
        report.skipped_protected,
        len(report.errors),
        report.duration_s,
        extra={"action": f"cleanup.{request.operation}"},
    )
    return report
