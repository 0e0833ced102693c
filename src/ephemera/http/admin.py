"""The ``/admin`` routes: every session, cleanup on demand, stats, the audit log."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from ephemera.clock import Clock
from ephemera.errors import Forbidden
from ephemera.http.credentials import Credential
from ephemera.http.jsonbody import json_body_route
from ephemera.http.openapi import operation_id
from ephemera.http.ratelimit import RateLimit, auth_failures, cleanup_requests
from ephemera.http.routes import ERRORS
from ephemera.http.schemas import (
    AdminSessionOut,
    AdminSessionPage,
    AuditEntryOut,
    AuditPage,
    CleanupReportOut,
    CleanupStats,
    SessionOut,
    SessionTotals,
    VerifyReportOut,
)
from ephemera.integrity import MAX_RATE_MB_S, Repair
from ephemera.models import KeyRole
from ephemera.store import Store

DryRun = Annotated[bool, Query(description="Report what would be deleted; delete nothing")]
Hours = Annotated[float | None, Query(ge=0, le=876_000, description="Idle threshold override")]
Days = Annotated[float | None, Query(ge=0, le=36_500, description="Result retention override")]
Details = Annotated[
    bool,
    Query(
        description="List every item with the rule that chose it, and every protected item "
        "with why it was spared"
    ),
]
Purge = Annotated[bool, Query(description="orphaned: drop ready records whose bytes are lost")]

# Stats are several dry runs over the store: a burst of requests shares one computation.
STATS_TTL_S = 1.0


class SharedStats:
    """The stats, computed at most once per ``ttl_s`` for each ``include_orphaned``.

    An answer is served while its computation began less than ``ttl_s`` ago, and to every
    caller that arrived while it ran (they waited for it): a burst shares one computation
    however long it takes. A cleanup or verification run through these routes drops what was
    cached, so its own admin sees the change at once.
    """

    def __init__(
        self, compute: Callable[[bool], dict[str, Any]], clock: Clock, ttl_s: float
    ) -> None:
        self._compute = compute
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_s)
        self._locks = {False: threading.Lock(), True: threading.Lock()}
        # include_orphaned -> (began, finished, answer)
        self._cached: dict[bool, tuple[datetime, datetime, dict[str, Any]]] = {}
        self._generation = 0  # bumped by clear(): an answer computed across it is not kept
        self._state = threading.Lock()

    def get(self, include_orphaned: bool, before_computing: Callable[[], None]) -> dict[str, Any]:
        """The cached stats, or fresh ones (``before_computing`` may refuse: rate limits)."""
        arrived = self._clock.now()
        with self._locks[include_orphaned]:
            hit = self._cached.get(include_orphaned)
            if hit is not None:
                began, finished, value = hit
                if finished >= arrived or timedelta(0) <= arrived - began < self._ttl:
                    return value
            before_computing()
            generation = self._generation
            began = self._clock.now()
            value = self._compute(include_orphaned)
            with self._state:
                if generation == self._generation:
                    self._cached[include_orphaned] = (began, self._clock.now(), value)
            return value

    def clear(self) -> None:
        with self._state:
            self._generation += 1
            self._cached.clear()


def admin_router(store: Store) -> APIRouter:
    router = APIRouter(
        prefix="/admin",
        route_class=json_body_route(store.settings.upload_idle_timeout_s),
        tags=["admin"],
        responses={**ERRORS, 429: ERRORS[409] | {"description": "Too many requests"}},
        dependencies=[Depends(auth_failures(store).gate)],
        generate_unique_id_function=operation_id,
    )
    limit = cleanup_requests(store)
    stats_limit = RateLimit(store.settings.cleanup_requests_per_minute, "stats computations")
    stats = SharedStats(
        lambda orphaned: store.cleanup_stats(include_orphaned=orphaned), store.clock, STATS_TTL_S
    )

    def admin_name(token: str) -> str:
        key = store.resolve_key(token)
        if key is None or key.role != KeyRole.ADMIN:
            raise Forbidden("this takes an admin key")
        return key.name

    def run(
        token: str,
        operation: str,
        *,
        dry_run: bool,
        hours_old: float | None,
        days_old: float | None,
        details: bool,
        purge_missing: bool,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        name = admin_name(token)
        limit.check(name)
        report = store.cleanup(
            operation,
            dry_run=dry_run,
            hours_old=hours_old,
            days_old=days_old,
            session_id=session_id,
            purge_missing=purge_missing,
            details=details,
            actor=f"admin:{name}",
        )
        stats.clear()
        return report.as_dict(details)

    @router.post("/cleanup/session/{session_id}", response_model=CleanupReportOut)
    def cleanup_session(
        session_id: str,
        token: Credential,
        dry_run: DryRun = False,
        details: Details = False,
    ) -> dict[str, Any]:
        """Close one session now through the cleanup engine (a lease still protects it)."""
        return run(
            token,
            "session",
            session_id=session_id,
            dry_run=dry_run,
            hours_old=None,
            days_old=None,
            details=details,
            purge_missing=False,
        )

    @router.post("/cleanup/{operation}", response_model=CleanupReportOut)
    def run_cleanup(
        operation: str,
        token: Credential,
        dry_run: DryRun = False,
        hours_old: Hours = None,
        days_old: Days = None,
        details: Details = False,
        purge_missing: Purge = False,
    ) -> dict[str, Any]:
        """Run a cleanup now: expired, idle-sessions, old-results, orphaned, quota or all."""
        return run(
            token,
            operation,
            dry_run=dry_run,
            hours_old=hours_old,
            days_old=days_old,
            details=details,
            purge_missing=purge_missing,
        )

    @router.post("/verify", response_model=VerifyReportOut)
    def verify(
        token: Credential,
        session_id: Annotated[
            str | None, Query(max_length=64, description="Only this session's artifacts")
        ] = None,
        rate_mb_s: Annotated[
            float | None, Query(gt=0, le=MAX_RATE_MB_S, description="Read at most this many MB/s")
        ] = None,
        repair: Annotated[
            Repair,
            Query(description="flag: keep wrong artifacts flagged; drop: delete them (not leased)"),
        ] = Repair.FLAG,
    ) -> dict[str, Any]:
        """Re-hash stored bytes; flag (or drop) missing and corrupt artifacts; audited."""
        name = admin_name(token)
        limit.check(name)
        report = store.verify(
            session_id=session_id, rate_mb_s=rate_mb_s, repair=repair, actor=f"admin:{name}"
        )
        stats.clear()
        return report.as_dict()

    @router.get("/cleanup/stats", response_model=CleanupStats)
    def cleanup_stats(
        token: Credential,
        include_orphaned: Annotated[
            bool, Query(description="Also walk the blob store for orphans (slow on big stores)")
        ] = False,
    ) -> dict[str, Any]:
        """What is stored, what each cleanup would delete now, leases, usage, integrity and
        the last runs.

        Computed at most once a second (per ``include_orphaned``): requests within that second
        share one computation, and only computations count against the per-key limit of
        cleanup requests a minute. A cleanup or verification run here shows at once.
        """
        name = admin_name(token)
        return stats.get(include_orphaned, lambda: stats_limit.check(name))

    @router.get("/audit", response_model=AuditPage)
    def list_audit_entries(
        token: Credential,
        cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        action: Annotated[str | None, Query(max_length=100)] = None,
    ) -> AuditPage:
        """The audit log, newest first; pass ``next_cursor`` back as ``cursor`` for older."""
        admin_name(token)
        page = store.audit_log(before=cursor, limit=limit, action=action)
        return AuditPage(
            items=[AuditEntryOut.model_validate(e) for e in page.items],
            next_cursor=page.next_cursor,
        )

    @router.get("/sessions", response_model=AdminSessionPage)
    def list_all_sessions(
        token: Credential,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AdminSessionPage:
        """Every session with its state, activity, artifacts, bytes and valid leases."""
        admin_name(token)
        rows = store.list_sessions_with_leases(cursor, limit)
        sessions_total, artifacts_total, bytes_total = store.totals()
        return AdminSessionPage(
            items=[
                AdminSessionOut(**SessionOut.model_validate(s).model_dump(), lease_count=leases)
                for s, leases in rows.items
            ],
            next_cursor=rows.next_cursor,
            totals=SessionTotals(
                sessions=sessions_total, artifacts=artifacts_total, bytes=bytes_total
            ),
        )

    return router
