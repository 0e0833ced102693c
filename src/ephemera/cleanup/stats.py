"""What is stored, what each operation would delete now, leases, usage, integrity, last runs.

What each operation would delete is counted, not walked: one set-based query per rule over
the sweep's own conditions (``catalog.stats``), so a stats request costs a few indexed
aggregates rather than a dry run per operation. The numbers equal a dry run's at the same
instant (the stats tests compare them). Two operations still run as dry runs: ``quota``,
whose eviction order depends on the running total (it reads the maintained totals and
returns at once below the high-water mark), and ``orphaned``, which walks the blob store
and is counted only when asked.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ephemera.blobs.resumable import ResumableBlobs
from ephemera.catalog import ArtifactRule, ArtifactSweep, SessionRule, SessionSweep
from ephemera.cleanup.engine import run_passes
from ephemera.cleanup.records import CleanupRequest, Operation
from ephemera.context import Context


def cleanup_stats(context: Context, *, include_orphaned: bool = False) -> dict[str, Any]:
    catalog = context.catalog
    settings = context.settings
    now = context.clock.now()
    cleanable = counted_cleanable(context, now)
    dry_runs = [Operation.QUOTA, Operation.ORPHANED] if include_orphaned else [Operation.QUOTA]
    for operation in dry_runs:
        report = run_passes(context, CleanupRequest(operation, dry_run=True), now=now)
        cleanable[operation] = _figures(
            report.deleted_count, report.deleted_size_bytes, report.skipped_protected
        )
    return {
        "at": now,
        "sessions": catalog.session_states(),
        "artifacts": [
            {"storage_class": c, "state": s, "count": n, "bytes": b}
            for c, s, n, b in catalog.artifact_breakdown()
        ],
        "cleanable": cleanable,
        "leased": catalog.lease_counts(now),
        "tasks": catalog.task_counts(),
        "usage": {
            "stored_bytes": catalog.stored_bytes(),
            "high_water_bytes": settings.quota_high_water_bytes,
            "low_water_bytes": settings.quota_low_water_bytes,
        },
        "integrity": _integrity(context),
        "last_runs": {
            e.action.removeprefix("cleanup."): {
                "at": e.at,
                "actor": e.actor,
                "params": e.params,
                "result": e.result,
            }
            for e in catalog.last_audit_per_action("cleanup.")
        },
    }


def counted_cleanable(context: Context, now: datetime) -> dict[str, Any]:
    """What ``expired``, ``idle-sessions`` and ``old-results`` would each delete at ``now``
    with their default parameters, as their dry runs would report it."""
    catalog = context.catalog
    settings = context.settings
    count, size, spared = catalog.cleanable_artifacts(ArtifactSweep(ArtifactRule.EXPIRED, now, now))
    if isinstance(context.blobs, ResumableBlobs):
        stale_before = now - timedelta(seconds=settings.tus_claim_timeout_s)
        uploads, upload_bytes = catalog.cleanable_uploads(now, stale_before)
        count, size = count + uploads, size + upload_bytes
    retention = now - timedelta(days=settings.result_retention_days)
    return {
        Operation.EXPIRED: _figures(count, size, spared),
        Operation.IDLE_SESSIONS: _figures(
            *catalog.cleanable_sessions(SessionSweep(SessionRule.IDLE, now))
        ),
        Operation.OLD_RESULTS: _figures(
            *catalog.cleanable_artifacts(ArtifactSweep(ArtifactRule.OLD_RESULTS, now, retention))
        ),
    }


def _figures(count: int, size: int, spared: int) -> dict[str, int]:
    return {"count": count, "bytes": size, "skipped_protected": spared}


def _integrity(context: Context) -> dict[str, Any]:
    flagged = context.catalog.flagged_counts()
    last = context.catalog.last_audit_per_action("verify")
    return {
        "corrupt": flagged.get("corrupt", 0),
        "missing": flagged.get("missing", 0),
        "never_verified": context.catalog.never_verified_count(),
        "last_run": (
            {"at": last[0].at, "actor": last[0].actor, "result": last[0].result} if last else None
        ),
    }
