"""Cleanup benchmark: ephemera's cleanup engine against ``find`` on the same tree.

Run from the project root: ``.venv-test/bin/python -m bench.cleanup`` (sizes 20,000 and 200,000
artifacts), ``--sizes 1000000`` for a large store, or ``--quick`` for a smoke run (2,000).

For each size N (artifacts 1-4 KiB, 100 per session, half of them temporary and expired, the
other half persistent; sessions far from their idle deadline) it builds, under ``bench/out/``:

* store A: a real ephemera store, created with ``Store.open`` (which migrates it) and then
  filled directly, rows with ``sqlite3`` ``executemany`` and files with ``os.write``, because
  ``put_artifact`` fsyncs (~6 ms each);
* tree B: the same files (same sizes, same layout) with no database, the expired half named
  ``<id>-x`` so that ``find`` can select exactly that half by name.

and measures, each command once, ``sync`` run before each so that no write-back is pending:

1. ``cleanup all`` on A in a child process against ``find B -type f -name '*-x' -delete``,
   checking that exactly the expired half went (report, records, files);
2. nothing-to-delete passes on the cleaned A: ``expired``, ``idle-sessions``,
   ``old-results``, ``quota`` in this process (first call, then best of 3), ``all`` (which
   includes the orphan walk) in a child;
3. the orphan scan: A and B are filled up again to N files, then ``cleanup orphaned`` on A
   (consistent, so it deletes nothing) in a child against ``find B -type f | wc -l``.

A child reports its own peak RSS (``VmHWM`` of ``/proc/self/status`` after the run: whole
process, interpreter and imports included). Times are wall-clock seconds; "call" is the
``store.cleanup`` call alone, "process" the whole child (interpreter start, imports,
``Store.open``), the way ``ephemera cleanup`` would run from cron.

A quota high-water mark is configured (1 PB, far above use) so that ``quota`` does its real
work (sum the stored bytes) instead of returning at once.

With ``--backends embedded,postgresql-s3`` (the default), store A is also built on PostgreSQL
+ S3 at the sizes of ``--s3-sizes`` (default 2,000 and 20,000; ``--quick`` 2,000): a fresh
database (rows with ``COPY``, then ``ANALYZE``) and a fresh bucket on a moto server started for
the run (objects with ``PutObject`` from a thread pool). The same passes are measured (there
is no tree B: the ``find`` baselines are the embedded run's) and printed as ratios against the
embedded store of the same size, which is then measured too in the same run. moto is Python,
keeps objects in its own process and runs on this machine: those numbers bound what ephemera
does around S3, not what a production object store would give.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.baselines import Timed, find_delete, find_walk
from bench.cleanup_child import ChildRun, run_child
from bench.populate import (
    EXPIRED_SUFFIX,
    PER_SESSION,
    PUT_THREADS,
    Populated,
    StoreA,
    make_layout,
    populate,
    refill,
)
from bench.store_checks import check_cleanup_all, count_files, stored_keys

if TYPE_CHECKING:
    from bench.transfer import PostgresS3

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MiB = 1024 * 1024
DELETE_AIM = 1.5
SCAN_AIM = 2.0
RSS_AIM_MB = 150
REPEAT_FAST = 3
FAST_OPS = ("expired", "idle-sessions", "old-results", "quota")
S3_SIZES = [2_000, 20_000]
# As in bench.transfer, which the cleanup children do not import (its imports would count in
# their start-up time and memory).
EMBEDDED = "embedded"
PG_S3 = "postgresql-s3"


def backend_of(store_a: StoreA) -> str:
    return PG_S3 if store_a.blob_url else EMBEDDED


# ---------------------------------------------------------------------------- machine


def print_machine(data_dir: Path, remote: PostgresS3 | None) -> None:
    from bench import transfer

    find = subprocess.run(["find", "--version"], capture_output=True, text=True, check=False)
    extra = {
        "SQLite": sqlite3.sqlite_version,
        "find": find.stdout.splitlines()[0] if find.stdout else "unknown",
    }
    if remote is not None:
        extra["database"] = remote.postgres_version()
        extra["S3"] = remote.moto_version()
    transfer.print_machine(data_dir, extra)


# ---------------------------------------------------------------------------- one size


@dataclass
class FastOp:
    operation: str
    first_s: float
    best_s: float
    deleted: int
    errors: int


@dataclass
class SizeResult:
    backend: str
    n: int
    sessions: int
    total_bytes: int
    populated: Populated
    refill_s: float
    clean_all: ChildRun
    fast: list[FastOp]
    idle_all: ChildRun
    orphaned: ChildRun
    problems: list[str]
    # The find baselines, on tree B: embedded runs only.
    find_delete: Timed | None = None
    find_walk: Timed | None = None


def fast_ops(store_a: StoreA) -> list[FastOp]:
    from ephemera import Store

    results = []
    with Store.open(store_a.settings()) as store:
        for op in FAST_OPS:
            times = []
            deleted = errors = 0
            for _ in range(REPEAT_FAST):
                start = time.perf_counter()
                report = store.cleanup(op, dry_run=False)
                times.append(time.perf_counter() - start)
                deleted += report.deleted_count
                errors += len(report.errors)
            results.append(FastOp(op, times[0], min(times), deleted, errors))
    return results


def bench_size(
    n: int, run_dir: Path, args: argparse.Namespace, remote: PostgresS3 | None = None
) -> SizeResult:
    """Build store A (and, embedded, tree B) with ``n`` artifacts and run the measured passes;
    on PostgreSQL + S3 when ``remote`` is given (a fresh database and bucket, dropped after)."""
    if remote is None:
        return _bench_size(n, run_dir, args, StoreA(run_dir / f"A-{n}"), None)
    database_url, blob_url = remote.fresh()
    store_a = StoreA(run_dir / f"A-{PG_S3}-{n}", database_url, blob_url)
    result = _bench_size(n, run_dir, args, store_a, remote)
    remote.drop(database_url, blob_url)  # after a failure, remote.close() drops them
    return result


def _bench_size(
    n: int, run_dir: Path, args: argparse.Namespace, store_a: StoreA, remote: PostgresS3 | None
) -> SizeResult:
    embedded = remote is None
    b_dir = run_dir / f"B-{n}"
    sessions_dir = b_dir / "sessions"
    profile_dir = run_dir / "profiles" if args.py_spy else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    def profile(name: str) -> Path | None:
        suffix = "" if embedded else f"-{PG_S3}"
        return None if profile_dir is None else profile_dir / f"{name}-{n}{suffix}.txt"

    if embedded:
        print(f"== N = {n:,} artifacts")
    else:
        print(f"== N = {n:,} artifacts, PostgreSQL + S3 (moto)")
        print(f"  EPHEMERA_DATABASE_URL={store_a.database_url}")
        print(f"  EPHEMERA_BLOB_URL={store_a.blob_url}")
    t0 = time.perf_counter()
    layout = make_layout(n)
    if embedded:
        populated = populate(layout, store_a, b_dir, time.perf_counter() - t0)
        print(f"  populated A and B in {populated.total_s:.1f} s")
    else:
        populated = populate(layout, store_a, None, time.perf_counter() - t0)
        print(f"  populated A in {populated.total_s:.1f} s")
    problems: list[str] = []

    # 1. delete the expired half
    clean_all = run_child("all", store_a, profile("all-delete"))
    print(f"  cleanup all: {clean_all.call_s:.3f} s call, {clean_all.process_s:.3f} s process")
    checked = check_cleanup_all(clean_all, layout, store_a)
    problems += [f"cleanup all: {p}" for p in checked]
    deleted_by_find: Timed | None = None
    if embedded:
        deleted_by_find = find_delete(sessions_dir)
        print(f"  find -delete: {deleted_by_find.seconds:.3f} s")
        left = count_files(sessions_dir)
        marked = count_files(sessions_dir, EXPIRED_SUFFIX)
        if left != n - n // 2 or marked:
            problems.append(f"find -delete left {left} files, {marked} of them marked")

    # 2. nothing to delete, on the cleaned store
    fast = fast_ops(store_a)
    problems += [
        f"idle {op.operation}: {op.deleted} deleted, {op.errors} errors"
        for op in fast
        if op.deleted or op.errors
    ]
    idle_all = run_child("all", store_a, profile("all-idle"))
    print(f"  nothing to delete: all {idle_all.call_s:.3f} s call")
    if idle_all.report["deleted_count"] or idle_all.report["error_count"]:
        problems.append(f"idle all: {idle_all.report}")

    # 3. orphan scan of N consistent files
    refill_s = refill(layout, store_a, b_dir if embedded else None)
    orphaned = run_child("orphaned", store_a, profile("orphaned"))
    print(f"  cleanup orphaned: {orphaned.call_s:.3f} s call")
    if orphaned.report["deleted_count"] or orphaned.report["error_count"]:
        problems.append(f"orphaned: {orphaned.report}")
    walked_by_find: Timed | None = None
    if embedded:
        walked_by_find, counted = find_walk(sessions_dir)
        if counted != n:
            problems.append(f"find | wc -l counted {counted}, expected {n}")
        print(f"  find | wc -l: {walked_by_find.seconds:.3f} s")
    elif len(keys := stored_keys(store_a.blob_url or "")) != n:
        problems.append(f"{len(keys)} objects in the bucket after the scan, expected {n}")
    print()
    return SizeResult(
        backend=backend_of(store_a),
        n=n,
        sessions=layout.sessions,
        total_bytes=layout.total_bytes,
        populated=populated,
        refill_s=refill_s,
        clean_all=clean_all,
        fast=fast,
        idle_all=idle_all,
        orphaned=orphaned,
        problems=problems,
        find_delete=deleted_by_find,
        find_walk=walked_by_find,
    )


# ---------------------------------------------------------------------------- summary


def _ok(value: float, aim: float, below: bool = True) -> str:
    good = value <= aim if below else value >= aim
    return "ok" if good else "MISSED"


def print_summary(results: Sequence[SizeResult], py_spy: bool) -> None:
    print("== Summary (wall-clock seconds; RSS in MB = 10^6 bytes; 'call' = store.cleanup() alone,")
    print("   'process' = the whole child: interpreter, imports, Store.open, the call)")
    if py_spy:
        print("   NOTE: children ran under py-spy (sampling 250 Hz): their times are inflated")
    print(
        "   Baseline choice: `find <tree> -type f -name '*-x' -delete` walks the whole tree and\n"
        "   deletes by name in one pass, the classic way to purge without a database; the\n"
        "   expired half carries the '-x' suffix in tree B only. Tree A's expired files are\n"
        "   scattered over all sessions in expiry order, which is the order cleanup deletes in."
    )
    for r in results:
        if r.backend != EMBEDDED:
            continue
        assert r.find_delete is not None
        assert r.find_walk is not None
        p = r.populated
        print()
        print(
            f"  N = {r.n:,} artifacts in {r.sessions:,} sessions, {r.n // 2:,} expired; "
            f"{r.total_bytes / MiB:.1f} MiB per tree"
        )
        print(
            f"    populate A+B: {p.total_s:.1f} s (layout {p.layout_s:.1f}, migrate "
            f"{p.store_s:.1f}, rows {p.rows_s:.1f}, files A+B {p.files_s:.1f}, sync "
            f"{p.sync_s:.1f}); refill for the scan {r.refill_s:.1f} s"
        )
        ca, fd = r.clean_all, r.find_delete
        ratio_call = ca.call_s / fd.seconds
        ratio_proc = ca.process_s / fd.seconds
        print(
            f"    delete expired half: cleanup all {ca.call_s:.3f} s call / {ca.process_s:.3f} s "
            f"process | find -delete {fd.seconds:.3f} s | ratio {ratio_call:.2f} call, "
            f"{ratio_proc:.2f} process (aim <= {DELETE_AIM}: {_ok(ratio_call, DELETE_AIM)})"
        )
        parts = ", ".join(
            f"{x['operation']} {x['duration_s']:.3f} s ({x['deleted_count']:,})"
            for x in ca.report["reports"]
        )
        print(f"      parts: {parts}")
        orp, fw = r.orphaned, r.find_walk
        scan_call = orp.call_s / fw.seconds
        print(
            f"    orphan scan of {r.n:,} files: cleanup orphaned {orp.call_s:.3f} s call / "
            f"{orp.process_s:.3f} s process | find | wc -l {fw.seconds:.3f} s | ratio "
            f"{scan_call:.2f} call, {orp.process_s / fw.seconds:.2f} process "
            f"(aim <= {SCAN_AIM}: {_ok(scan_call, SCAN_AIM)})"
        )
        peak = max(ca.peak_mb, orp.peak_mb, r.idle_all.peak_mb)
        print(
            f"    peak RSS (child VmHWM): cleanup all {ca.peak_mb:.0f} MB (at start of call "
            f"{ca.rss_before_mb:.0f}), orphaned {orp.peak_mb:.0f} MB (at start "
            f"{orp.rss_before_mb:.0f}), idle all {r.idle_all.peak_mb:.0f} MB "
            f"(aim < {RSS_AIM_MB}: {_ok(peak, RSS_AIM_MB - 1e-9)})"
        )
        fast = ", ".join(
            f"{f.operation} {f.first_s * 1e3:.1f}/{f.best_s * 1e3:.1f}" for f in r.fast
        )
        ia = r.idle_all
        idle_parts = ", ".join(
            f"{x['operation']} {x['duration_s'] * 1e3:.1f}" for x in ia.report["reports"]
        )
        print(f"    nothing to delete, in-process ms (first/best of {REPEAT_FAST}): {fast}")
        print(
            f"    nothing to delete, all on {r.n - r.n // 2:,} files (child): {ia.call_s:.3f} s "
            f"call / {ia.process_s:.3f} s process; parts ms: {idle_parts}"
        )
        print(f"    checks: {'all passed' if not r.problems else 'FAILED'}")
        for problem in r.problems:
            print(f"      - {problem}")
        _print_profiles(r)


def _print_profiles(r: SizeResult) -> None:
    for label, run in (("cleanup all", r.clean_all), ("idle all", r.idle_all),
                       ("orphan scan", r.orphaned)):  # fmt: skip
        if run.profile:
            print(f"    py-spy profile of {label}:")
            for line in run.profile:
                print(f"      {line}")


def _vs(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference else "n/a"


def print_remote_summary(results: Sequence[SizeResult]) -> None:
    """PostgreSQL + S3 against the embedded store of the same size, measured in this run."""
    from bench.transfer import MOTO_NOTE

    embedded = {r.n: r for r in results if r.backend == EMBEDDED}
    remote = [r for r in results if r.backend == PG_S3]
    if not remote:
        return
    print()
    print("== PostgreSQL + S3 against the embedded default at the same size, in this run")
    print("   (ratio = PostgreSQL + S3 / embedded; above 1 is slower or bigger)")
    print(
        "   Store A on a fresh database (rows by COPY, then ANALYZE) and a fresh bucket\n"
        f"   (objects by PutObject, {PUT_THREADS} at a time); no tree B: the find baselines are\n"
        "   the embedded run's. Sizes from --s3-sizes (default 2,000 and 20,000, smaller than\n"
        "   the embedded 20,000 and 200,000: moto takes a few hundred objects per second)."
    )
    for line in MOTO_NOTE.splitlines():
        print(f"   {line}")
    for r in remote:
        e = embedded[r.n]
        p = r.populated
        print()
        print(
            f"  N = {r.n:,} artifacts in {r.sessions:,} sessions, {r.n // 2:,} expired; "
            f"{r.total_bytes / MiB:.1f} MiB in the bucket"
        )
        print(
            f"    populate A: {p.total_s:.1f} s (layout {p.layout_s:.1f}, migrate "
            f"{p.store_s:.1f}, rows {p.rows_s:.1f}, objects {p.files_s:.1f} = "
            f"{r.n / p.files_s if p.files_s else 0:.0f}/s); refill for the scan {r.refill_s:.1f} s"
        )
        for label, run, ref in (
            ("delete expired half: cleanup all", r.clean_all, e.clean_all),
            ("nothing to delete: all", r.idle_all, e.idle_all),
            (f"orphan scan of {r.n:,} objects: cleanup orphaned", r.orphaned, e.orphaned),
        ):
            print(
                f"    {label} {run.call_s:.3f} s call / {run.process_s:.3f} s process | "
                f"embedded {ref.call_s:.3f} / {ref.process_s:.3f} s | ratio "
                f"{_vs(run.call_s, ref.call_s)} call, {_vs(run.process_s, ref.process_s)} process"
            )
        parts = ", ".join(
            f"{x['operation']} {x['duration_s']:.3f} s ({x['deleted_count']:,})"
            for x in r.clean_all.report["reports"]
        )
        print(f"      cleanup all parts: {parts}")
        fast = ", ".join(
            f"{f.operation} {f.first_s * 1e3:.1f}/{f.best_s * 1e3:.1f} ({_vs(f.best_s, g.best_s)})"
            for f, g in zip(r.fast, e.fast, strict=True)
        )
        print(
            f"    nothing to delete, in-process ms (first/best of {REPEAT_FAST}, ratio of best):"
            f" {fast}"
        )
        runs = (
            ("cleanup all", r.clean_all, e.clean_all),
            ("orphaned", r.orphaned, e.orphaned),
            ("idle all", r.idle_all, e.idle_all),
        )
        peaks = ", ".join(
            f"{label} {run.peak_mb:.0f} MB (embedded {ref.peak_mb:.0f}, ratio "
            f"{_vs(run.peak_mb, ref.peak_mb)})"
            for label, run, ref in runs
        )
        peak = max(run.peak_mb for _, run, _ in runs)
        print(
            f"    peak RSS (child VmHWM): {peaks} (aim < {RSS_AIM_MB}: "
            f"{_ok(peak, RSS_AIM_MB - 1e-9)})"
        )
        print(f"    checks: {'all passed' if not r.problems else 'FAILED'}")
        for problem in r.problems:
            print(f"      - {problem}")
        _print_profiles(r)


# ---------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[int]:
    sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    if not sizes or any(s < 2 * PER_SESSION for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be at least {2 * PER_SESSION}")
    return sizes


def _parse_backends(text: str) -> list[str]:
    from bench.transfer import parse_backends

    return parse_backends(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[20_000, 200_000],
        help="artifact counts, e.g. 20000,200000",
    )
    parser.add_argument(
        "--backends",
        type=_parse_backends,
        default=[EMBEDDED, PG_S3],
        help=f"stores to measure (default {EMBEDDED},{PG_S3}; {EMBEDDED} alone for the embedded"
        " default only)",
    )
    parser.add_argument(
        "--s3-sizes",
        type=parse_sizes,
        default=S3_SIZES,
        help="artifact counts on PostgreSQL + S3 (default 2000,20000); the embedded store is"
        " measured at these sizes too, for the ratios",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2,000 artifacts only (on each backend)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the embedded trees in bench/out (PostgreSQL + S3 stores are always dropped)",
    )
    parser.add_argument(
        "--py-spy", action="store_true", help="profile the cleanup children with py-spy (slower)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [2_000]
        args.s3_sizes = [2_000]
    if PG_S3 not in args.backends:
        args.s3_sizes = []
    return args


def _remove(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="cleanup-", dir=OUT))
    started = time.perf_counter()
    results: list[SizeResult] = []
    remote: PostgresS3 | None = None
    try:
        if args.s3_sizes:
            from bench.transfer import PostgresS3

            remote = PostgresS3(run_dir)
        print_machine(run_dir, remote)
        # Each size in turn, the embedded store first; at the PostgreSQL + S3 sizes the
        # embedded store is measured too, as their reference.
        for n in sorted(set(args.sizes) | set(args.s3_sizes)):
            results.append(bench_size(n, run_dir, args))
            if not args.keep:
                for tree in ("A", "B"):
                    _remove(run_dir / f"{tree}-{n}")
            if remote is not None and n in args.s3_sizes:
                results.append(bench_size(n, run_dir, args, remote))
        print_summary(results, args.py_spy)
        print_remote_summary(results)
    finally:
        if remote is not None:
            remote.close()
        if args.keep:
            print(f"\nkept {run_dir}")
        else:
            from bench.transfer import remove_run_dir

            remove_run_dir(run_dir)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
