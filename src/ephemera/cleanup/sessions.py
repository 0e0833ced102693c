"""The session passes: ``idle-sessions``, ``session`` (one, now) and ``quota`` (evict the least
recently active sessions above the high-water mark). Each closes whole sessions."""

from __future__ import annotations

from datetime import datetime, timedelta

from ephemera.catalog import Candidate, SessionRule, SessionSweep
from ephemera.cleanup.records import (
    CleanupItem,
    CleanupReport,
    ItemKind,
    ProtectedItem,
    ProtectedReason,
    Rule,
)
from ephemera.cleanup.run import Run
from ephemera.errors import EphemeraError
from ephemera.models import SessionState
from ephemera.removal import remove_session


def idle_sessions(run: Run, report: CleanupReport) -> None:
    hours = run.request.hours_old
    idle_before = run.now - timedelta(hours=hours) if hours is not None else None
    _session_pass(run, report, SessionSweep(SessionRule.IDLE, run.now, idle_before=idle_before))


def one_session(run: Run, report: CleanupReport) -> None:
    assert run.request.session_id is not None
    _session_pass(
        run, report, SessionSweep(SessionRule.ONE, run.now, session_id=run.request.session_id)
    )


def _session_pass(run: Run, report: CleanupReport, sweep: SessionSweep) -> None:
    after: str | None = None
    while batch := run.context.catalog.session_candidates(sweep, after, run.batch_size):
        after = batch[-1].id
        for candidate in batch:
            _close(run, report, candidate, sweep)
        run.progress(report.operation, len(batch))


def _close(run: Run, report: CleanupReport, candidate: Candidate, sweep: SessionSweep) -> None:
    """Close one selected session (or, in a dry run, report it)."""
    rule = Rule.CLOSING if candidate.state == SessionState.CLOSING else Rule(sweep.rule)
    if candidate.id in run.ledger.sessions:
        return
    # What an earlier pass of a dry run reported deleted is still counted in the candidate's
    # size; in a real run it is already gone.
    freed = run.ledger.freed_in.get(candidate.id, 0)
    if candidate.leased or candidate.retained:
        # A lease is named first when both hold: it is what spares a session from the quota.
        reason = ProtectedReason.LEASED if candidate.leased else ProtectedReason.RETAINED
        size = candidate.size - freed
        report.spare(
            ProtectedItem(ItemKind.SESSION, candidate.id, candidate.id, size, rule, reason)
        )
        return
    catalog = run.context.catalog
    if run.dry_run:
        _, size = catalog.session_usage_all(candidate.id)
        size -= freed
        report.add(CleanupItem(ItemKind.SESSION, candidate.id, candidate.id, size, rule))
        run.ledger.close_session(candidate.id, size)
        return
    one = SessionSweep(sweep.rule, sweep.now, sweep.idle_before, candidate.id)
    if not catalog.claim_session(one):
        return
    try:
        dropped = remove_session(run.context, candidate.id, rule, run.now)
    except EphemeraError as exc:
        report.error(f"session {candidate.id}", exc.message)
        return
    if dropped is not None:
        report.add(CleanupItem(ItemKind.SESSION, candidate.id, candidate.id, dropped[1], rule))


def quota(run: Run, report: CleanupReport) -> None:
    """Above the high-water mark, evict the least recently active unleased sessions."""
    settings = run.context.settings
    catalog = run.context.catalog
    # The quota runs at every scheduled tick: it keeps the log of the totals short.
    catalog.fold_totals()
    high = settings.quota_high_water_bytes
    if high is None:
        return
    low = settings.quota_low_water_bytes if settings.quota_low_water_bytes is not None else high
    used = catalog.stored_bytes() - run.ledger.freed
    if used <= high:
        return
    after: tuple[datetime, str] | None = None
    while used > low:
        batch = catalog.eviction_candidates(run.now, after, run.batch_size)
        if not batch:
            break
        after = (batch[-1].order_key, batch[-1].id)
        for candidate in batch:
            if used <= low:
                break
            sweep = SessionSweep(SessionRule.QUOTA, run.now, session_id=candidate.id)
            before = report.deleted_size_bytes
            _close(run, report, candidate, sweep)
            used -= report.deleted_size_bytes - before
        run.progress(report.operation, len(batch))
