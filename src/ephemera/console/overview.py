"""The overview: a picture of the storage, cleanup and tasks, for operators.

What is stored by state and storage class, what each cleanup operation would delete now,
the last run of each operation and when the next scheduled one is due, tasks by state, the
largest and the idlest sessions, and charts of the usage samples the scheduler records at
each tick. The figures refresh every 30 s where htmx runs; without it, a reload does.

The storage and cleanup figures are ``cleanup_stats``: several dry runs over the store, and
the largest sessions one pass over the artifacts. They are computed at most once per
:data:`STATS_TTL_S` in a process, whoever asks, and afresh as soon as anything new is audited
(a cleanup or verification, by any page or process), so a run's effect shows at once. What
is left for each view (usage samples, the scheduler's lock) are index lookups.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console.auth import Console
from ephemera.console.charts import Chart, line_chart
from ephemera.console.templating import render, size
from ephemera.http.admin import SharedStats
from ephemera.models import ConsoleLogin, TaskState, UsageSample
from ephemera.scheduler import next_tick
from ephemera.store import Store

STATS_TTL_S = 5.0
LISTED = 10  # sessions in each of the two lists
# Also on "refresh" (console.js sends it; anything may), not only on the timer.
REFRESH = "every 30s, refresh"
# The charts' spans (label, seconds); those longer than the samples are kept are not offered.
SPANS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
DEFAULT_SPAN = "24h"
# The operations whose dry runs the stats include (orphaned walks the blob store: not here).
CLEANABLE = ("expired", "idle-sessions", "old-results", "quota")
TASK_STATES = tuple(state.value for state in TaskState)
LATEST_SAMPLES = 10  # in the charts' table


class OverviewStats:
    """The costly figures (``stats``: ``store.cleanup_stats()``; the ``largest`` and the
    ``idlest`` sessions) shared by every view for :data:`STATS_TTL_S`, dropped as soon as
    a cleanup or verification run is recorded (by any page or process): only those change
    the figures at once, and other entries (sign-ins, sessions made) are far more frequent."""

    def __init__(self, store: Store, ttl_s: float = STATS_TTL_S) -> None:
        self._store = store
        self._shared = SharedStats(
            lambda orphaned: {
                "stats": store.cleanup_stats(include_orphaned=orphaned),
                "largest": store.largest_sessions(LISTED),
                "idlest": store.idlest_sessions(LISTED),
            },
            store.clock,
            ttl_s,
        )
        self._mark: tuple[int, ...] | None = None
        self._guard = threading.Lock()

    def get(self) -> dict[str, Any]:
        mark = tuple(
            entry.id
            for action in ("cleanup.", "verify")
            for entry in self._store.audit_log(limit=1, action=action).items
        )
        with self._guard:
            if mark != self._mark:
                self._shared.clear()
                self._mark = mark
        return self._shared.get(False, lambda: None)


@dataclass(frozen=True)
class Usage:
    """The charts of one span, and the latest samples as a table."""

    span: str
    spans: list[str]
    charts: list[Chart]
    latest: list[UsageSample]


def _count(value: float) -> str:
    return f"{int(value):,}"


def _size(value: float) -> str:
    return size(int(value))


@dataclass(frozen=True)
class Series:
    """One chart of the usage samples."""

    key: str
    title: str
    value: Callable[[UsageSample], float]
    show: Callable[[float], str]
    binary: bool = False


SERIES = (
    Series("bytes", "Bytes stored", lambda sample: sample.bytes, _size, binary=True),
    Series("artifacts", "Ready artifacts", lambda sample: sample.artifacts, _count),
    Series("sessions", "Open sessions", lambda sample: sample.sessions, _count),
)


def chosen_span(store: Store, span: str | None) -> tuple[str, list[str]]:
    """The span asked for if offered (else the default), and the offered ones."""
    retention = store.settings.usage_retention_s
    offered = [name for name, seconds in SPANS.items() if seconds <= retention]
    if span in offered:
        return str(span), offered
    return (DEFAULT_SPAN if DEFAULT_SPAN in offered else offered[-1]), offered


def usage(store: Store, span: str | None) -> Usage:
    name, offered = chosen_span(store, span)
    samples = store.usage_history(SPANS[name])
    charts = [
        chart
        for series in SERIES
        if (
            chart := line_chart(
                series.key,
                series.title,
                [(sample.at, series.value(sample)) for sample in samples],
                series.show,
                binary=series.binary,
            )
        )
    ]
    return Usage(
        name,
        offered,
        charts,
        samples[-LATEST_SAMPLES:][::-1],
    )


def every(seconds: int) -> str:
    """An interval for people: 15 min, 1 h, 90 s."""
    for span, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= span and seconds % span == 0:
            return f"{seconds // span} {unit}"
    return f"{seconds} s"


def figures(store: Store, stats: OverviewStats, span: str | None) -> dict[str, Any]:
    """Everything the overview shows, read now (the stats maybe a few seconds ago)."""
    costly = stats.get()
    computed = costly["stats"]
    artifacts: list[dict[str, Any]] = sorted(
        computed["artifacts"], key=lambda a: (a["storage_class"], a["state"])
    )
    ready = [a for a in artifacts if a["state"] == "ready"]
    due: datetime | None = next_tick(store)
    return {
        "stats": computed,
        "artifacts": artifacts,
        "session_count": sum(computed["sessions"].values()),
        "ready_count": sum(a["count"] for a in ready),
        "ready_bytes": sum(a["bytes"] for a in ready),
        "all_count": sum(a["count"] for a in artifacts),
        "all_bytes": sum(a["bytes"] for a in artifacts),
        "cleanable": [(op, computed["cleanable"][op]) for op in CLEANABLE],
        "last_runs": sorted(computed["last_runs"].items()),
        "next_tick": due,
        "now": store.clock.now(),
        "tasks": [(state, computed["tasks"].get(state, 0)) for state in TASK_STATES],
        "largest": costly["largest"],
        "idlest": costly["idlest"],
        "usage": usage(store, span),
        "interval": every(store.settings.cleanup_interval_s),
        "scheduled": store.settings.scheduled_cleanup,
        "refresh": REFRESH,
    }


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store
    stats = OverviewStats(store)

    @router.get("/")
    def overview(
        request: Request,
        span: str | None = None,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        if login.role == "session":
            return RedirectResponse(f"{router.prefix}/workspace/{login.session_id}", 303)
        return render(
            request,
            "overview/page.html",
            {
                "title": "Overview",
                "nav": "overview",
                "login": login,
                **figures(store, stats, span),
            },
        )

    @router.get("/overview/figures")
    def overview_figures(
        request: Request,
        span: str | None = None,
        login: ConsoleLogin = Depends(console.operator),
    ) -> Response:
        """The page's figures alone, for htmx to swap in (every 30 s)."""
        return render(
            request,
            "overview/figures.html",
            {"login": login, **figures(store, stats, span)},
        )
