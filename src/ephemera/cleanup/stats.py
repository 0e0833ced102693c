"""What is stored, what each operation would delete now, leases, usage, integrity, last runs."""

from __future__ import annotations

from typing import Any

from ephemera.cleanup.engine import run_passes
from ephemera.cleanup.records import CleanupRequest, Operation
from ephemera.context import Context

# Each a dry run at one shared instant; `orphaned` walks the blob store, so only when asked.
DRY_RUNS = (
    Operation.EXPIRED,
    Operation.IDLE_SESSIONS,
    Operation.OLD_RESULTS,
    Operation.QUOTA,
    Operation.ORPHANED,
)


def cleanup_stats(context: Context, *, include_orphaned: bool = False) -> dict[str, Any]:
    catalog = context.catalog
    settings = context.settings
    now = context.clock.now()
    cleanable: dict[str, Any] = {}
    for operation in DRY_RUNS:
        if operation == Operation.ORPHANED and not include_orphaned:
            continue
        report = run_passes(context, CleanupRequest(operation, dry_run=True), now=now)
        cleanable[operation] = {
            "count": report.deleted_count,
            "bytes": report.deleted_size_bytes,
            "skipped_protected": report.skipped_protected,
        }
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
