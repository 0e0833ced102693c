"""The store's rows of the scale table at one size N: the population tool, the orphan walk,
deleting the expired half, the nothing-to-delete passes a scheduled tick pays, and the peak
RSS of the cleanup children, each against its limit measured in the same run.

Order on a freshly populated store A and tree B (``bench.populate``):

1. the plain file-writing loop of the same N files (the population tool's limit), removed;
2. ``cleanup orphaned`` over the consistent store (deletes nothing) in a child, against
   ``find B -type f | wc -l``;
3. ``cleanup all`` deleting the expired half in a child, against
   ``find B -type f -name '*-x' -delete``; checked: exactly the expired half went;
4. on the cleaned store, in this process: ``quota`` with nothing to delete and one scheduled
   tick (``CleanupScheduler.tick``, what ``ephemera serve`` runs every interval), first call
   and best of ``REPEAT_FAST``.

The constant figures (quota, tick) and the per-item cost compare with the same figure at the
reference size (2,000 artifacts) measured in the same run; peak RSS with the next smaller size.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.baselines import Timed, find_delete, find_walk
from bench.cleanup_child import ChildRun, run_child
from bench.populate import EXPIRED_SUFFIX, Layout, Populated, StoreA, make_layout, plain_loop
from bench.populate import populate as populate_store
from bench.rows import Row
from bench.store_checks import check_cleanup_all, count_files

REPEAT_FAST = 5
DELETE_AIM = 1.3
SCAN_AIM = 1.5
PER_ITEM_AIM = 1.3  # "flat": within 30% of the per-item cost at the reference size
CONSTANT_AIM = 2.0  # "constant": a few milliseconds either way is noise on a loaded machine
RSS_AIM_MB = 150
RSS_FLAT_AIM = 1.1


@dataclass
class Fast:
    """An in-process call on the cleaned store: first call, best of ``REPEAT_FAST``."""

    first_s: float
    best_s: float
    parts: str = ""  # the last call's report, operation by operation (a tick runs `all`)


@dataclass
class SizeRun:
    n: int
    layout: Layout
    populated: Populated
    plain_s: float
    orphaned: ChildRun
    walk: Timed
    clean_all: ChildRun
    delete: Timed
    quota: Fast
    tick: Fast
    problems: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return max(self.orphaned.peak_mb, self.clean_all.peak_mb)

    @property
    def per_item_ms(self) -> float:
        return self.clean_all.call_s * 1000 / self.layout.expired_count


def _fast(call: Callable[[], Any]) -> tuple[Fast, list[Any]]:
    times, results = [], []
    for _ in range(REPEAT_FAST):
        start = time.perf_counter()
        results.append(call())
        times.append(time.perf_counter() - start)
    return Fast(times[0], min(times)), results


def idle_passes(store_a: StoreA) -> tuple[Fast, Fast, list[str]]:
    """``quota`` and a scheduled tick on a store with nothing to delete; their problems."""
    from ephemera import Store
    from ephemera.scheduler import CleanupScheduler

    problems = []
    with Store.open(store_a.settings()) as store:
        quota, reports = _fast(lambda: store.cleanup("quota", dry_run=False))
        scheduler = CleanupScheduler(store)
        tick, ticks = _fast(scheduler.tick)
    last = ticks[-1]
    if last is not None:
        tick.parts = ", ".join(
            f"{r.operation} {r.duration_s * 1e3:.1f}" for r in getattr(last, "reports", [])
        )
    for label, runs in (("quota", reports), ("tick", ticks)):
        for report in runs:
            if report is None:
                problems.append(f"{label}: another process held the scheduled tick")
            elif report.deleted_count or report.errors:
                problems.append(
                    f"{label}: {report.deleted_count} deleted, {len(report.errors)} errors"
                )
    return quota, tick, problems


def measure_size(n: int, run_dir: Path, on_step: Callable[[str], None] = print) -> SizeRun:
    """Populate store A and tree B with ``n`` artifacts under ``run_dir`` and measure them."""
    store_a = StoreA(run_dir / f"A-{n}")
    b_dir = run_dir / f"B-{n}"
    sessions_b = b_dir / "sessions"
    t0 = time.perf_counter()
    layout = make_layout(n)
    populated = populate_store(layout, store_a, b_dir, time.perf_counter() - t0)
    on_step(f"  populated A and B: {populated.line()}")
    plain_dir = run_dir / f"plain-{n}"
    plain_s = plain_loop(layout, plain_dir)
    shutil.rmtree(plain_dir)
    on_step(f"  plain loop, the same {n:,} files once: {plain_s:.1f} s")
    problems: list[str] = []

    orphaned = run_child("orphaned", store_a)
    walk, counted = find_walk(sessions_b)
    on_step(f"  orphaned {orphaned.call_s:.3f} s call | find walk {walk.seconds:.3f} s")
    if orphaned.report["deleted_count"] or orphaned.report["error_count"]:
        problems.append(f"orphaned on a consistent store: {orphaned.report}")
    if counted != n:
        problems.append(f"find | wc -l counted {counted}, expected {n}")

    clean_all = run_child("all", store_a)
    problems += [f"cleanup all: {p}" for p in check_cleanup_all(clean_all, layout, store_a)]
    delete = find_delete(sessions_b)
    on_step(f"  cleanup all {clean_all.call_s:.3f} s call | find -delete {delete.seconds:.3f} s")
    left, marked = count_files(sessions_b), count_files(sessions_b, EXPIRED_SUFFIX)
    if left != n - layout.expired_count or marked:
        problems.append(f"find -delete left {left} files, {marked} of them marked")

    quota, tick, idle_problems = idle_passes(store_a)
    problems += idle_problems
    on_step(
        f"  nothing to delete: quota {quota.best_s * 1e3:.1f} ms, tick {tick.best_s * 1e3:.1f} ms"
    )
    return SizeRun(
        n, layout, populated, plain_s, orphaned, walk, clean_all, delete, quota, tick, problems
    )


def _parts(run: ChildRun) -> str:
    return ", ".join(
        f"{p['operation']} {p['duration_s']:.3f} s ({p['deleted_count']:,})"
        for p in run.report["reports"]
    )


def size_rows(run: SizeRun, reference: SizeRun | None, smaller: SizeRun | None) -> list[Row]:
    """The rows of one size; ``reference`` is the 2,000-artifact store of this run (None for
    that store itself), ``smaller`` the next smaller size measured (None for the smallest)."""
    n = run.n
    pop = run.populated
    at_ref = f"at {reference.n:,}" if reference else ""
    find_ms = run.delete.seconds * 1000 / run.layout.expired_count
    rows = [
        Row(
            "population tool (files/s)",
            n,
            pop.rate,
            "files/s",
            limit=n / run.plain_s,
            limit_name="plain write loop",
            higher_is_better=True,
            note=f"at {n:,}: {pop.line()}; A and B = {pop.files:,} files",
        ),
        Row(
            "cleanup all, delete expired half",
            n,
            run.clean_all.call_s,
            "s",
            limit=run.delete.seconds,
            limit_name="find -delete",
            aim=DELETE_AIM,
            note=f"at {n:,}: process {run.clean_all.process_s:.2f} s; {_parts(run.clean_all)}",
        ),
        Row(
            "  ms per deleted item",
            n,
            run.per_item_ms,
            "ms",
            limit=reference.per_item_ms if reference else None,
            limit_name=at_ref,
            aim=PER_ITEM_AIM if reference else None,
            note=f"at {n:,}: find -delete {find_ms:.3f} ms per item",
        ),
        Row(
            "orphaned, whole store",
            n,
            run.orphaned.call_s,
            "s",
            limit=run.walk.seconds,
            limit_name="find -type f walk",
            aim=SCAN_AIM,
        ),
        Row(
            "quota, nothing to delete",
            n,
            run.quota.best_s,
            "s",
            limit=reference.quota.best_s if reference else None,
            limit_name=at_ref,
            aim=CONSTANT_AIM if reference else None,
        ),
        Row(
            "scheduled tick, nothing to delete",
            n,
            run.tick.best_s,
            "s",
            limit=reference.tick.best_s if reference else None,
            limit_name=at_ref,
            aim=CONSTANT_AIM if reference else None,
            note=f"at {n:,}: first tick {run.tick.first_s * 1e3:.1f} ms, best of {REPEAT_FAST}; "
            f"last tick's parts ms: {run.tick.parts}",
        ),
    ]
    for label, child in (("orphaned", run.orphaned), ("cleanup all", run.clean_all)):
        rows.append(Row(f"peak RSS, {label} child", n, child.peak_mb, "MB", aim=RSS_AIM_MB))
    if smaller is not None:
        rows.append(
            Row(
                "peak RSS, largest child",
                n,
                run.peak_mb,
                "MB",
                limit=smaller.peak_mb,
                limit_name=f"at {smaller.n:,}",
                aim=RSS_FLAT_AIM,
            )
        )
    return rows


def store_rows(runs: Sequence[SizeRun], reference_n: int) -> list[Row]:
    """Rows of every size, smallest first; the reference size's rows carry no comparison."""
    ordered = sorted(runs, key=lambda r: r.n)
    reference = next((r for r in ordered if r.n == reference_n), None)
    rows: list[Row] = []
    for k, run in enumerate(ordered):
        ref = reference if reference is not None and run is not reference else None
        rows += size_rows(run, ref, ordered[k - 1] if k else None)
    return rows
