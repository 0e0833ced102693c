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
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.transfer import PostgresS3
    from ephemera import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PER_SESSION = 100
MIN_SIZE = 1024
MAX_SIZE = 4096
EXPIRED_SUFFIX = "-x"
QUOTA_HIGH_WATER = 10**15  # configured, but far above what is stored
SEED = 20261121
MB = 1_000_000  # the RSS aim is stated in megabytes
MiB = 1024 * 1024
DELETE_AIM = 1.5
SCAN_AIM = 2.0
RSS_AIM_MB = 150
REPEAT_FAST = 3
FAST_OPS = ("expired", "idle-sessions", "old-results", "quota")
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how UTCDateTime keeps time in SQLite (naive UTC text)
S3_SIZES = [2_000, 20_000]
# As in bench.transfer, which the cleanup children do not import (its imports would count in
# their start-up time and memory).
EMBEDDED = "embedded"
PG_S3 = "postgresql-s3"
PUT_THREADS = 8  # PutObject calls in flight while populating the bucket


# ---------------------------------------------------------------------------- store A


@dataclass(frozen=True)
class StoreA:
    """Store A's backends: the embedded default in ``data_dir``, or PostgreSQL + S3 when both
    URLs are given (``data_dir`` then holds nothing)."""

    data_dir: Path
    database_url: str | None = None
    blob_url: str | None = None

    @property
    def backend(self) -> str:
        return PG_S3 if self.database_url else EMBEDDED

    def settings(self) -> Settings:
        from ephemera import Settings

        return Settings(
            data_dir=self.data_dir,
            database_url=self.database_url,
            blob_url=self.blob_url,
            quota_high_water_bytes=QUOTA_HIGH_WATER,
        )

    def child_args(self, operation: str) -> list[str]:
        argv = ["--child", operation, str(self.data_dir)]
        if self.database_url and self.blob_url:
            argv += ["--child-database", self.database_url, "--child-blobs", self.blob_url]
        return argv


# ---------------------------------------------------------------------------- child process


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _report_dict(report: Any) -> dict[str, Any]:
    return {
        "operation": report.operation,
        "deleted_count": report.deleted_count,
        "deleted_size_bytes": report.deleted_size_bytes,
        "skipped_protected": report.skipped_protected,
        "errors": list(report.errors)[:20],
        "error_count": len(report.errors),
        "duration_s": report.duration_s,
        "reports": [_report_dict(r) for r in getattr(report, "reports", [])],
    }


def child_main(operation: str, store_a: StoreA) -> int:
    """Run one cleanup on ``store_a`` and print one JSON line: timings, report, memory."""
    started = time.perf_counter()
    from ephemera import Store

    with Store.open(store_a.settings()) as store:
        opened = time.perf_counter()
        rss_before = _proc_status_kib("VmRSS")
        report = store.cleanup(operation, dry_run=False)
        call = time.perf_counter() - opened
    body = {
        "startup_s": opened - started,
        "call_s": call,
        "rss_before_kib": rss_before,
        "hwm_kib": _proc_status_kib("VmHWM"),
        "report": _report_dict(report),
    }
    print(json.dumps(body))
    return 0


@dataclass
class ChildRun:
    operation: str
    process_s: float
    call_s: float
    rss_before_mb: float
    peak_mb: float
    report: dict[str, Any]
    profile: list[str] = field(default_factory=list)

    def part(self, operation: str) -> dict[str, Any]:
        for part in self.report["reports"]:
            if part["operation"] == operation:
                return dict(part)
        raise KeyError(operation)


def run_child(operation: str, store_a: StoreA, profile_to: Path | None) -> ChildRun:
    argv = [sys.executable, "-m", "bench.cleanup", *store_a.child_args(operation)]
    if profile_to is not None:
        spy = Path(sys.executable).parent / "py-spy"
        argv = [str(spy), "record", "--idle", "--format", "raw", "-r", "250"]
        argv += ["-o", str(profile_to), "--"]
        argv += [sys.executable, "-m", "bench.cleanup", *store_a.child_args(operation)]
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cleanup {operation} failed ({done.returncode}):\n{done.stderr}")
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    body = json.loads(line)
    run = ChildRun(
        operation,
        seconds,
        body["call_s"],
        body["rss_before_kib"] * 1024 / MB,
        body["hwm_kib"] * 1024 / MB,
        body["report"],
    )
    if profile_to is not None:
        run.profile = top_functions(profile_to)
    return run


def top_functions(raw: Path, limit: int = 12) -> list[str]:
    """Top functions of a py-spy raw profile, within ``run_cleanup`` (imports left out)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = inside = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        if not any(f.startswith("run_cleanup (") for f in frames):
            continue
        inside += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not inside:
        return [f"{total} samples, none in run_cleanup"]
    lines = [f"{inside} samples in run_cleanup (of {total}); self time:"]
    lines += [f"  {n / inside:6.1%}  {name}" for name, n in own.most_common(limit)]
    lines.append("inclusive time:")
    lines += [f"  {n / inside:6.1%}  {name}" for name, n in inclusive.most_common(limit + 8)]
    return lines


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


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


# ---------------------------------------------------------------------------- the data


@dataclass
class Layout:
    """N artifacts, 100 per session; which are expired, their sizes and their bytes."""

    n: int
    session_ids: list[str]
    artifact_ids: list[str]
    sizes: list[int]
    offsets: list[int]
    expired: list[bool]
    created: list[datetime]
    pool: bytes
    now: datetime

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def session_of(self, i: int) -> str:
        return self.session_ids[i // PER_SESSION]

    def data(self, i: int) -> bytes:
        return self.pool[self.offsets[i] : self.offsets[i] + self.sizes[i]]


def make_layout(n: int) -> Layout:
    from ephemera.ids import new_uuid7

    rng = random.Random(SEED + n)  # noqa: S311 - reproducible test data, not secrets
    sessions = (n + PER_SESSION - 1) // PER_SESSION
    expired = [True] * (n // 2) + [False] * (n - n // 2)
    rng.shuffle(expired)
    now = datetime.now(UTC).replace(tzinfo=None)
    day = 86400.0
    # Created between 2 days and 1 day + 1 minute ago; temporary ones live a day, so every
    # expired one is past its deadline, in an order unrelated to sessions.
    created = [now - timedelta(seconds=2 * day - rng.uniform(0, day - 60)) for _ in range(n)]
    return Layout(
        n=n,
        session_ids=[f"s{s:06d}" for s in range(sessions)],
        artifact_ids=[new_uuid7() for _ in range(n)],
        sizes=[rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(n)],
        offsets=[rng.randrange(0, 60 * 1024) for _ in range(n)],
        expired=expired,
        created=created,
        pool=rng.randbytes(64 * 1024),
        now=now,
    )


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime(TS_FORMAT)


def session_rows(layout: Layout) -> Iterator[tuple[Any, ...]]:
    created = _ts(layout.now - timedelta(days=2))
    active = layout.now - timedelta(minutes=1)
    idle_s = 30 * 86400  # idle deadline a month away: idle-sessions selects nothing
    for sid in layout.session_ids:
        token_hash = hashlib.sha256(sid.encode()).hexdigest()
        deadline = _ts(active + timedelta(seconds=idle_s))
        yield (sid, token_hash, None, "{}", "open", created, _ts(active), idle_s, None, deadline)


def artifact_rows(layout: Layout, which: Sequence[int]) -> Iterator[tuple[Any, ...]]:
    for i in which:
        created = layout.created[i]
        temporary = layout.expired[i]
        yield (
            layout.artifact_ids[i],
            layout.session_of(i),
            f"file-{i % PER_SESSION:03d}.bin",
            "input",
            "application/octet-stream",
            layout.sizes[i],
            hashlib.sha256(layout.data(i)).hexdigest(),
            "temporary" if temporary else "persistent",
            "ready",
            _ts(created),
            _ts(created + timedelta(milliseconds=5)),
            _ts(created + timedelta(days=1)) if temporary else None,
            None,
            None,
        )


SESSION_INSERT = (
    "INSERT INTO sessions (id, token_hash, label, metadata, state, created_at, "
    "last_activity_at, idle_timeout_s, max_age_s, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
ARTIFACT_INSERT = (
    "INSERT INTO artifacts (id, session_id, name, kind, content_type, size, sha256, "
    "storage_class, state, created_at, ready_at, expires_at, retain_until, producer) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def insert_rows(db: Path, layout: Layout, which: Sequence[int], *, sessions: bool) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        if sessions:
            conn.executemany(SESSION_INSERT, session_rows(layout))
        conn.executemany(ARTIFACT_INSERT, artifact_rows(layout, which))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def blob_path(root: Path, layout: Layout, i: int, *, marked: bool) -> Path:
    name = layout.artifact_ids[i]
    if marked and layout.expired[i]:
        name += EXPIRED_SUFFIX
    return root / "sessions" / layout.session_of(i) / name


def write_files(layout: Layout, which: Sequence[int], a_blobs: Path, b_root: Path) -> None:
    """The same bytes into store A's blob tree and into tree B, side by side."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for root in (a_blobs, b_root):
        (root / "sessions").mkdir(parents=True, exist_ok=True)
    (a_blobs / "staging").mkdir(exist_ok=True)
    made: set[str] = set()
    for i in which:
        sid = layout.session_of(i)
        if sid not in made:
            for root in (a_blobs, b_root):
                (root / "sessions" / sid).mkdir(exist_ok=True)
            made.add(sid)
        data = layout.data(i)
        for path in (
            blob_path(a_blobs, layout, i, marked=False),
            blob_path(b_root, layout, i, marked=True),
        ):
            fd = os.open(path, flags, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


@dataclass
class Populated:
    layout_s: float
    store_s: float
    rows_s: float
    files_s: float
    sync_s: float

    @property
    def total_s(self) -> float:
        return self.layout_s + self.store_s + self.rows_s + self.files_s + self.sync_s


def populate(layout: Layout, a_dir: Path, b_dir: Path, layout_s: float) -> Populated:
    from ephemera import Store

    t0 = time.perf_counter()
    Store.open(StoreA(a_dir).settings()).close()  # creates and migrates the database
    t1 = time.perf_counter()
    everything = range(layout.n)
    insert_rows(a_dir / "ephemera.db", layout, everything, sessions=True)
    t2 = time.perf_counter()
    write_files(layout, everything, a_dir / "blobs", b_dir)
    t3 = time.perf_counter()
    os.sync()
    t4 = time.perf_counter()
    return Populated(layout_s, t1 - t0, t2 - t1, t3 - t2, t4 - t3)


def refill(layout: Layout, a_dir: Path, b_dir: Path) -> float:
    """Put the expired half back into A (records and files) and B: both hold N files again."""
    t0 = time.perf_counter()
    half = [i for i in range(layout.n) if layout.expired[i]]
    insert_rows(a_dir / "ephemera.db", layout, half, sessions=False)
    write_files(layout, half, a_dir / "blobs", b_dir)
    os.sync()
    return time.perf_counter() - t0


# The same rows on PostgreSQL, with COPY; timestamps are the same naive UTC text, read in a
# session whose time zone is UTC.
SESSION_COPY = (
    "COPY sessions (id, token_hash, label, metadata, state, created_at, last_activity_at, "
    "idle_timeout_s, max_age_s, expires_at) FROM STDIN"
)
ARTIFACT_COPY = (
    "COPY artifacts (id, session_id, name, kind, content_type, size, sha256, storage_class, "
    "state, created_at, ready_at, expires_at, retain_until, producer) FROM STDIN"
)


def copy_rows(database_url: str, layout: Layout, which: Sequence[int], *, sessions: bool) -> None:
    """Rows into PostgreSQL with COPY, in one transaction, then ANALYZE: a store that has
    been in use has its statistics (autovacuum gathers them), a bulk load has none yet."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        with conn.cursor() as cur:
            if sessions:
                with cur.copy(SESSION_COPY) as copy:
                    for row in session_rows(layout):
                        copy.write_row(row)
            with cur.copy(ARTIFACT_COPY) as copy:
                for row in artifact_rows(layout, which):
                    copy.write_row(row)
        conn.commit()
        conn.execute("ANALYZE sessions")
        conn.execute("ANALYZE artifacts")
        conn.commit()


def object_key(layout: Layout, i: int) -> str:
    from ephemera.blobs import artifact_key

    return artifact_key(layout.session_of(i), layout.artifact_ids[i])


def put_objects(blob_url: str, layout: Layout, which: Sequence[int]) -> None:
    """The same bytes as objects, ``PUT_THREADS`` PutObject calls at a time, with ephemera's
    own S3 client (``put_artifact`` would also hash and record each, one at a time)."""
    from ephemera.blobs.s3 import S3BlobStore

    store = S3BlobStore.from_url(blob_url)
    client = store.client()

    def put(i: int) -> None:
        key = store.object_key(object_key(layout, i))
        client.put_object(Bucket=store.bucket, Key=key, Body=layout.data(i))

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for _ in pool.map(put, which):
            pass


def populate_remote(layout: Layout, store_a: StoreA, layout_s: float) -> Populated:
    from ephemera import Store

    assert store_a.database_url
    assert store_a.blob_url
    t0 = time.perf_counter()
    Store.open(store_a.settings()).close()  # migrates the empty database
    t1 = time.perf_counter()
    everything = range(layout.n)
    copy_rows(store_a.database_url, layout, everything, sessions=True)
    t2 = time.perf_counter()
    put_objects(store_a.blob_url, layout, everything)
    t3 = time.perf_counter()
    return Populated(layout_s, t1 - t0, t2 - t1, t3 - t2, 0.0)


def refill_remote(layout: Layout, store_a: StoreA) -> float:
    """Put the expired half back into the database and the bucket."""
    assert store_a.database_url
    assert store_a.blob_url
    t0 = time.perf_counter()
    half = [i for i in range(layout.n) if layout.expired[i]]
    copy_rows(store_a.database_url, layout, half, sessions=False)
    put_objects(store_a.blob_url, layout, half)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- checks


def count_files(root: Path, suffix: str | None = None) -> int:
    count = 0
    for _dir, _subdirs, files in os.walk(root):
        count += sum(1 for f in files if suffix is None or f.endswith(suffix))
    return count


def db_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT storage_class || '/' || state, count(*) FROM artifacts GROUP BY 1"
        ).fetchall()
        return {str(k): int(v) for k, v in rows}
    finally:
        conn.close()


def pg_counts(database_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT storage_class || '/' || state, count(*) FROM artifacts GROUP BY 1"
        ).fetchall()
    return {str(k): int(v) for k, v in rows}


def stored_keys(blob_url: str) -> set[str]:
    from ephemera.blobs.s3 import S3BlobStore

    return {stat.key for stat in S3BlobStore.from_url(blob_url).list("sessions/")}


def check_report(run: ChildRun, layout: Layout) -> list[str]:
    """Problems with the report of a `cleanup all` that should have deleted the expired half."""
    problems = []
    half = layout.n // 2
    expired = run.part("expired")
    if expired["deleted_count"] != half:
        problems.append(f"expired deleted {expired['deleted_count']}, expected {half}")
    if run.report["deleted_count"] != half:
        problems.append(f"all deleted {run.report['deleted_count']} in total, expected {half}")
    if run.report["error_count"]:
        problems.append(f"{run.report['error_count']} errors: {run.report['errors'][:3]}")
    return problems


def check_cleanup_all(run: ChildRun, layout: Layout, a_dir: Path) -> list[str]:
    """Problems with a `cleanup all` that should have deleted exactly the expired half."""
    problems = check_report(run, layout)
    half = layout.n // 2
    blobs = a_dir / "blobs"
    left = sum(
        1
        for i in range(layout.n)
        if layout.expired[i] and blob_path(blobs, layout, i, marked=False).exists()
    )
    if left:
        problems.append(f"{left} expired files still on disk")
    files = count_files(blobs / "sessions")
    if files != layout.n - half:
        problems.append(f"{files} files left in A, expected {layout.n - half}")
    counts = db_counts(a_dir / "ephemera.db")
    if counts != {"persistent/ready": layout.n - half}:
        problems.append(f"records left in A: {counts}")
    return problems


def check_cleanup_all_remote(run: ChildRun, layout: Layout, store_a: StoreA) -> list[str]:
    """The same checks on PostgreSQL + S3: the bucket's objects and the database's rows."""
    assert store_a.database_url
    assert store_a.blob_url
    problems = check_report(run, layout)
    half = layout.n // 2
    keys = stored_keys(store_a.blob_url)
    left = sum(1 for i in range(layout.n) if layout.expired[i] and object_key(layout, i) in keys)
    if left:
        problems.append(f"{left} expired objects still in the bucket")
    if len(keys) != layout.n - half:
        problems.append(f"{len(keys)} objects left in A, expected {layout.n - half}")
    counts = pg_counts(store_a.database_url)
    if counts != {"persistent/ready": layout.n - half}:
        problems.append(f"records left in A: {counts}")
    return problems


# ---------------------------------------------------------------------------- baselines


@dataclass
class Timed:
    seconds: float
    stdout: str


def timed(argv: Sequence[str]) -> Timed:
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr}")
    return Timed(seconds, done.stdout)


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
    a_dir = store_a.data_dir
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
        populated = populate(layout, a_dir, b_dir, time.perf_counter() - t0)
        print(f"  populated A and B in {populated.total_s:.1f} s")
    else:
        populated = populate_remote(layout, store_a, time.perf_counter() - t0)
        print(f"  populated A in {populated.total_s:.1f} s")
    problems: list[str] = []

    # 1. delete the expired half
    clean_all = run_child("all", store_a, profile("all-delete"))
    print(f"  cleanup all: {clean_all.call_s:.3f} s call, {clean_all.process_s:.3f} s process")
    if embedded:
        checked = check_cleanup_all(clean_all, layout, a_dir)
    else:
        checked = check_cleanup_all_remote(clean_all, layout, store_a)
    problems += [f"cleanup all: {p}" for p in checked]
    find_delete: Timed | None = None
    if embedded:
        find_delete = timed(
            ["find", str(sessions_dir), "-type", "f", "-name", f"*{EXPIRED_SUFFIX}", "-delete"]
        )
        print(f"  find -delete: {find_delete.seconds:.3f} s")
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
    refill_s = refill(layout, a_dir, b_dir) if embedded else refill_remote(layout, store_a)
    orphaned = run_child("orphaned", store_a, profile("orphaned"))
    print(f"  cleanup orphaned: {orphaned.call_s:.3f} s call")
    if orphaned.report["deleted_count"] or orphaned.report["error_count"]:
        problems.append(f"orphaned: {orphaned.report}")
    find_walk: Timed | None = None
    if embedded:
        find_walk = timed(["sh", "-c", f"find '{sessions_dir}' -type f | wc -l"])
        counted = int(find_walk.stdout.strip() or 0)
        if counted != n:
            problems.append(f"find | wc -l counted {counted}, expected {n}")
        print(f"  find | wc -l: {find_walk.seconds:.3f} s")
    elif len(keys := stored_keys(store_a.blob_url or "")) != n:
        problems.append(f"{len(keys)} objects in the bucket after the scan, expected {n}")
    print()
    return SizeResult(
        backend=store_a.backend,
        n=n,
        sessions=len(layout.session_ids),
        total_bytes=layout.total_bytes,
        populated=populated,
        refill_s=refill_s,
        clean_all=clean_all,
        fast=fast,
        idle_all=idle_all,
        orphaned=orphaned,
        problems=problems,
        find_delete=find_delete,
        find_walk=find_walk,
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
    parser.add_argument(
        "--child", nargs=2, metavar=("OPERATION", "DATA_DIR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--child-database", help=argparse.SUPPRESS)
    parser.add_argument("--child-blobs", help=argparse.SUPPRESS)
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
    if args.child:
        store_a = StoreA(Path(args.child[1]), args.child_database, args.child_blobs)
        return child_main(args.child[0], store_a)
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
