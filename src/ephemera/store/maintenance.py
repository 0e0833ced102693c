"""Cleanup, verification, the audit log and the stats: the operator's part of
:class:`~ephemera.store.Store` (its base class). The work is :mod:`ephemera.cleanup`'s and
:mod:`ephemera.integrity`'s; this records it in the metrics and audit log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ephemera.cleanup import CleanupReport, CleanupRequest, Progress, cleanup_stats, run_cleanup
from ephemera.context import Context
from ephemera.integrity import (
    ProgressFn,
    Repair,
    VerifyReport,
    VerifyRequest,
    refuse_flagged,
    run_verify,
    verified_chunks,
)
from ephemera.metrics import Metrics
from ephemera.models import Artifact, AuditEntry, Page
from ephemera.store import audit
from ephemera.volume import Volume


class MaintenanceMethods:
    """Cleanup, verification, the audit log and the stats of :class:`~ephemera.store.Store`."""

    context: Context
    volume: Volume
    metrics: Metrics

    def cleanup(
        self,
        operation: str,
        *,
        dry_run: bool = False,
        hours_old: float | None = None,
        days_old: float | None = None,
        session_id: str | None = None,
        purge_missing: bool = False,
        details: bool = False,
        incremental: bool = False,
        actor: str = "library",
        progress: Progress | None = None,
    ) -> CleanupReport:
        """Run a cleanup operation (see ``ephemera.cleanup``); it is recorded in the audit log.

        ``incremental`` (what the scheduler's tick asks): orphan reconciliation does the next
        slice of its lap, when one is due, instead of walking the whole store."""
        # A bad request changes nothing, the reserve included.
        request = CleanupRequest.checked(
            operation,
            dry_run=dry_run,
            hours_old=hours_old,
            days_old=days_old,
            session_id=session_id,
            purge_missing=purge_missing,
            details=details,
            incremental=incremental,
        )
        if not dry_run:
            # On a full volume the database cannot even record a delete: give it the reserve.
            self.volume.release_reserve_if_low()
        report = run_cleanup(self.context, request, actor=actor, progress=progress)
        self.metrics.observe(report)
        return report

    def audit(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        params: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> int:
        return audit.record(self.context, actor, action, target, params, result)

    def audit_log(
        self,
        *,
        before: int | None = None,
        limit: int = 100,
        action: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Page[AuditEntry]:
        """Newest first; ``action`` is a prefix, ``actor`` exact, ``since`` <= at < ``until``."""
        return audit.entries(self.context, before, limit, action, actor, since, until)

    def verify(
        self,
        *,
        session_id: str | None = None,
        rate_mb_s: float | None = None,
        repair: Repair | str = Repair.FLAG,
        actor: str = "library",
        progress: ProgressFn | None = None,
    ) -> VerifyReport:
        """Re-hash stored bytes (see ``ephemera.integrity``); recorded in the audit log."""
        request = VerifyRequest.checked(session_id, rate_mb_s, repair)
        report = run_verify(self.context, request, actor=actor, progress=progress)
        self.metrics.observe_verify(report)
        return report

    def iter_verified(self, artifact: Artifact) -> Iterator[bytes]:
        """The bytes of an artifact already looked up, hashed as they stream: a mismatch flags
        it and raises ArtifactCorrupt before the last chunk (see ``ephemera.integrity``)."""
        return verified_chunks(self.context, artifact, on_flagged=self.metrics.observe_flagged)

    def check_intact(self, artifact: Artifact) -> None:
        """ArtifactCorrupt if verification found this artifact's bytes wrong or missing."""
        refuse_flagged(artifact)

    def cleanup_stats(self, *, include_orphaned: bool = False) -> dict[str, Any]:
        """What is stored, what each operation would delete now, leases, usage, last runs."""
        return cleanup_stats(self.context, include_orphaned=include_orphaned)
