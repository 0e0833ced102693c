"""Running cleanup operations: dispatch, timing, the audit record and the log line.

Every operation walks its candidates in batches (set-based queries on indexes, so cost grows
with what is selected, not with what is stored) and, for each batch, either reports (dry run)
or acts. Dry and real runs share this one path and differ only at the act step, so a dry run
reports exactly what a real run at the same moment would delete (guarantee 6).

Acting follows one protocol everywhere: mark (a conditional state change that re-checks the
rule and every lease in the same statement), remove bytes, remove records
(``ephemera.removal``). A record is counted by the run whose delete statement removed it, so
two runs at once never double-count, and a run interrupted anywhere leaves marked items that
the next run finishes (guarantee 7). Artifact passes remove one batch's bytes on a second thread
while they select and mark the next (``DeletePipeline``); each item still goes mark, bytes,
records. Per-item errors are collected in the report and never stop the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final

from ephemera.cleanup.artifacts import expired, old_results
from ephemera.cleanup.orphans import orphaned
from ephemera.cleanup.records import (
    ALL_ORDER,
    CleanupReport,
    CleanupRequest,
    Operation,
    Progress,
)
from ephemera.cleanup.run import Run
from ephemera.cleanup.sessions import idle_sessions, one_session, quota
from ephemera.context import Context
from ephemera.errors import NotFound

log = logging.getLogger("ephemera.cleanup")

Pass = Callable[[Run, CleanupReport], None]

PASSES: Final[Mapping[Operation, Pass]] = {
    Operation.EXPIRED: expired,
    Operation.IDLE_SESSIONS: idle_sessions,
    Operation.SESSION: one_session,
    Operation.OLD_RESULTS: old_results,
    Operation.ORPHANED: orphaned,
    Operation.QUOTA: quota,
}


def _ignore(_operation: str, _examined: int) -> None:
    pass


def run_passes(
    context: Context,
    request: CleanupRequest,
    *,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> CleanupReport:
    """The operation's passes at one instant, nothing recorded."""
    run = Run(context, request, now or context.clock.now(), progress or _ignore)
    if request.operation != Operation.ALL:
        return _timed(run, request.operation)
    report = run.report(Operation.ALL)
    started = time.perf_counter()
    for part in ALL_ORDER:
        report.absorb(_timed(run, part))
    report.duration_s = round(time.perf_counter() - started, 6)
    return report


def _timed(run: Run, operation: Operation) -> CleanupReport:
    report = run.report(operation)
    started = time.perf_counter()
    PASSES[operation](run, report)
    report.duration_s = round(time.perf_counter() - started, 6)
    return report


def run_cleanup(
    context: Context,
    request: CleanupRequest,
    *,
    actor: str = "library",
    progress: Progress | None = None,
) -> CleanupReport:
    """Run one cleanup operation, record it in the audit log, and return its report."""
    if request.operation == Operation.SESSION:
        assert request.session_id is not None
        if context.catalog.get_session_row(request.session_id) is None:
            raise NotFound(f"session {request.session_id} not found")
    report = run_passes(context, request, progress=progress)
    _audit(context, actor, request, report)
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


def _audit(context: Context, actor: str, request: CleanupRequest, report: CleanupReport) -> None:
    """One audit entry per operation run (``all`` adds one for each of its parts)."""
    params = request.params()
    clock = context.clock
    catalog = context.catalog
    for part in report.reports:
        action = f"cleanup.{part.operation}"
        catalog.insert_audit(clock.now(), actor, action, None, params, part.totals())
    action = f"cleanup.{request.operation}"
    catalog.insert_audit(clock.now(), actor, action, request.session_id, params, report.totals())
