"""Population tool: a store of N artifacts built directly, in minutes at 1,000,000.

``python -m bench.populate --size 1000000 --out DIR`` builds, under ``DIR``:

* ``A``, an ephemera store: ``Store.open`` creates and migrates the database, then the rows go
  in with ``executemany`` in large transactions (SQLite, ``synchronous=OFF`` for the load only)
  or ``COPY`` (PostgreSQL, ``--database-url``), and the files are written directly
  (``os.open``/``os.write``, a few threads, no fsync; one ``sync`` at the end), because
  ``put_artifact`` fsyncs each (~6 ms);
* ``B``, the same files (same sizes, same layout) with no database, the expired half named
  ``<id>-x`` so that ``find`` can select exactly that half by name.

The layout, the one every benchmark uses: 100 artifacts per session, 1-4 KiB each; half of
them temporary and expired (expiry spread over the past day, in no relation to sessions), the
other half persistent; sessions open, their idle deadline a month away. Everything about
artifact ``i`` derives from ``i`` and a seed, kept in compact arrays, so that the tool's own
memory stays small at a million.

The benchmarks import ``make_layout`` and ``populate``; the command line prints the time it
took and its rate in files/s against a plain loop writing the same files (``--baseline``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ephemera import Settings

PER_SESSION = 100
MIN_SIZE = 1024
MAX_SIZE = 4096
POOL_SIZE = 64 * 1024
EXPIRED_SUFFIX = "-x"
SEED = 20261121
DAY_S = 86400.0
QUOTA_HIGH_WATER = 10**15  # configured, but far above what is stored
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # how UTCDateTime keeps time in SQLite (naive UTC text)
ROWS_PER_TRANSACTION = 200_000
WRITE_THREADS = 4  # os.write releases the GIL; more threads than cores hide the syscalls' waits
PUT_THREADS = 8  # PutObject calls in flight while populating a bucket


# ---------------------------------------------------------------------------- store A


@dataclass(frozen=True)
class StoreA:
    """Store A's backends: the embedded default in ``data_dir``; PostgreSQL when
    ``database_url`` is given; S3 as well when ``blob_url`` is (``data_dir`` then holds
    nothing)."""

    data_dir: Path
    database_url: str | None = None
    blob_url: str | None = None

    @property
    def blobs(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "ephemera.db"

    def settings(self) -> Settings:
        from ephemera import Settings

        return Settings(
            data_dir=self.data_dir,
            database_url=self.database_url,
            blob_url=self.blob_url,
            quota_high_water_bytes=QUOTA_HIGH_WATER,
        )


# ---------------------------------------------------------------------------- the layout


@dataclass
class Layout:
    """N artifacts, 100 per session: which are expired, their sizes and their bytes."""

    n: int
    sizes: array[int]
    offsets: array[int]
    expired: bytearray
    created_ago_s: array[float]  # seconds before ``now``
    id_ms: int
    id_tag: int
    pool: bytes
    now: datetime

    @property
    def sessions(self) -> int:
        return (self.n + PER_SESSION - 1) // PER_SESSION

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def expired_count(self) -> int:
        return self.n // 2

    def session_id(self, s: int) -> str:
        return f"s{s:07d}"

    def session_of(self, i: int) -> str:
        return self.session_id(i // PER_SESSION)

    def artifact_id(self, i: int) -> str:
        # A UUIDv7 (what ephemera generates) whose random bits are a per-layout tag and ``i``.
        value = self.id_ms << 80 | 0x7 << 76 | self.id_tag << 64 | 0b10 << 62 | i
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def data(self, i: int) -> bytes:
        return self.pool[self.offsets[i] : self.offsets[i] + self.sizes[i]]

    def created(self, i: int) -> datetime:
        return self.now - timedelta(seconds=self.created_ago_s[i])

    def expired_indices(self) -> list[int]:
        return [i for i in range(self.n) if self.expired[i]]


def make_layout(n: int) -> Layout:
    rng = random.Random(SEED + n)  # noqa: S311 - reproducible test data, not secrets
    expired = bytearray(b"\x01" * (n // 2) + b"\x00" * (n - n // 2))
    rng.shuffle(expired)
    now = datetime.now(UTC).replace(tzinfo=None)
    # Created between 2 days and 1 day + 1 minute ago; temporary ones live a day, so every
    # expired one is past its deadline, in an order unrelated to sessions.
    ago = array("d", (2 * DAY_S - rng.uniform(0, DAY_S - 60) for _ in range(n)))
    return Layout(
        n=n,
        sizes=array("H", (rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(n))),
        offsets=array("H", (rng.randrange(0, POOL_SIZE - MAX_SIZE) for _ in range(n))),
        expired=expired,
        created_ago_s=ago,
        id_ms=int(now.replace(tzinfo=UTC).timestamp() * 1000),
        id_tag=rng.getrandbits(12),
        pool=rng.randbytes(POOL_SIZE),
        now=now,
    )


# ---------------------------------------------------------------------------- rows


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime(TS_FORMAT)


def session_rows(layout: Layout) -> Iterator[tuple[Any, ...]]:
    created = _ts(layout.now - timedelta(days=2))
    active = layout.now - timedelta(minutes=1)
    idle_s = 30 * 86400  # idle deadline a month away: idle-sessions selects nothing
    deadline = _ts(active + timedelta(seconds=idle_s))
    for s in range(layout.sessions):
        sid = layout.session_id(s)
        token_hash = hashlib.sha256(sid.encode()).hexdigest()
        yield (sid, token_hash, None, "{}", "open", created, _ts(active), idle_s, None, deadline)


def artifact_rows(layout: Layout, which: Sequence[int]) -> Iterator[tuple[Any, ...]]:
    for i in which:
        created = layout.created(i)
        temporary = layout.expired[i]
        yield (
            layout.artifact_id(i),
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


SESSION_COLUMNS = (
    "id, token_hash, label, metadata, state, created_at, last_activity_at, idle_timeout_s, "
    "max_age_s, expires_at"
)
ARTIFACT_COLUMNS = (
    "id, session_id, name, kind, content_type, size, sha256, storage_class, state, created_at, "
    "ready_at, expires_at, retain_until, producer"
)
# Constant text only: no value is ever formatted into these statements.
SESSION_INSERT = f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({','.join('?' * 10)})"  # noqa: S608
ARTIFACT_INSERT = f"INSERT INTO artifacts ({ARTIFACT_COLUMNS}) VALUES ({','.join('?' * 14)})"  # noqa: S608
# The same rows on PostgreSQL; timestamps are the same naive UTC text, read in a session whose
# time zone is UTC.
SESSION_COPY = f"COPY sessions ({SESSION_COLUMNS}) FROM STDIN"
ARTIFACT_COPY = f"COPY artifacts ({ARTIFACT_COLUMNS}) FROM STDIN"


def _chunks(which: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(which), size):
        yield which[start : start + size]


def insert_rows(db: Path, layout: Layout, which: Sequence[int], *, sessions: bool) -> None:
    """Rows into SQLite with ``executemany``, ``ROWS_PER_TRANSACTION`` per transaction, with
    ``synchronous=OFF`` on this connection only (the store's own connections keep theirs)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        if sessions:
            conn.execute("BEGIN")
            conn.executemany(SESSION_INSERT, session_rows(layout))
            conn.execute("COMMIT")
        for chunk in _chunks(which, ROWS_PER_TRANSACTION):
            conn.execute("BEGIN")
            conn.executemany(ARTIFACT_INSERT, artifact_rows(layout, chunk))
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


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


def store_rows(store_a: StoreA, layout: Layout, which: Sequence[int], *, sessions: bool) -> None:
    if store_a.database_url:
        copy_rows(store_a.database_url, layout, which, sessions=sessions)
    else:
        insert_rows(store_a.sqlite_path, layout, which, sessions=sessions)


# ---------------------------------------------------------------------------- files


def blob_path(root: Path, layout: Layout, i: int, *, marked: bool) -> Path:
    name = layout.artifact_id(i)
    if marked and layout.expired[i]:
        name += EXPIRED_SUFFIX
    return root / "sessions" / layout.session_of(i) / name


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, _CREATE, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_session(
    layout: Layout, indices: Sequence[int], roots: Sequence[tuple[str, bool]]
) -> None:
    """The files of one session (``indices``) under each root; ``marked`` roots name the
    expired ones ``<id>-x``."""
    sid = layout.session_of(indices[0])
    folders = []
    for root, marked in roots:
        folder = f"{root}/sessions/{sid}"
        os.makedirs(folder, exist_ok=True)
        folders.append((folder, marked))
    for i in indices:
        data = layout.data(i)
        name = layout.artifact_id(i)
        suffix = EXPIRED_SUFFIX if layout.expired[i] else ""
        for folder, marked in folders:
            _write(f"{folder}/{name}{suffix if marked else ''}", data)


def _by_session(which: Sequence[int]) -> Iterator[Sequence[int]]:
    if isinstance(which, range) and which.step == 1:
        # The whole store: slices of the range, no list of a million indices.
        start = which.start
        while start < which.stop:
            end = min(which.stop, (start // PER_SESSION + 1) * PER_SESSION)
            yield range(start, end)
            start = end
        return
    groups: dict[int, list[int]] = {}
    for i in which:
        groups.setdefault(i // PER_SESSION, []).append(i)
    yield from groups.values()


def write_files(
    layout: Layout,
    which: Sequence[int],
    a_blobs: Path | None,
    b_root: Path | None,
    threads: int = WRITE_THREADS,
) -> None:
    """The same bytes into store A's blob tree and into tree B (either may be None), one
    session folder per job on ``threads`` threads."""
    roots = [(str(r), marked) for r, marked in ((a_blobs, False), (b_root, True)) if r]
    for root, _ in roots:
        os.makedirs(f"{root}/sessions", exist_ok=True)
    if a_blobs is not None:
        (a_blobs / "staging").mkdir(exist_ok=True)
    groups = _by_session(which)
    if threads <= 1:
        for group in groups:
            _write_session(layout, group, roots)
        return
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda g: _write_session(layout, g, roots), groups, chunksize=16):
            pass


def plain_loop(layout: Layout, root: Path) -> float:
    """The limit for the files: the same N files written by the obvious loop (one thread,
    ``mkdir`` per session, ``open``/``write``/``close`` per file, one ``sync``); seconds."""
    t0 = time.perf_counter()
    for s in range(layout.sessions):
        folder = root / layout.session_id(s)
        folder.mkdir(parents=True)
        for i in range(s * PER_SESSION, min(layout.n, (s + 1) * PER_SESSION)):
            with open(folder / layout.artifact_id(i), "wb") as f:
                f.write(layout.data(i))
    os.sync()
    return time.perf_counter() - t0


def object_key(layout: Layout, i: int) -> str:
    from ephemera.blobs import artifact_key

    return artifact_key(layout.session_of(i), layout.artifact_id(i))


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


# ---------------------------------------------------------------------------- populate


@dataclass
class Populated:
    layout_s: float
    store_s: float
    rows_s: float
    files_s: float
    sync_s: float
    files: int  # files written (A and B) or objects put

    @property
    def total_s(self) -> float:
        return self.layout_s + self.store_s + self.rows_s + self.files_s + self.sync_s

    @property
    def rate(self) -> float:
        """Files per second over the whole build (rows, migration and sync included)."""
        return self.files / self.total_s if self.total_s else 0.0

    def line(self) -> str:
        return (
            f"{self.total_s:.1f} s (layout {self.layout_s:.1f}, migrate {self.store_s:.1f}, "
            f"rows {self.rows_s:.1f}, files {self.files_s:.1f}, sync {self.sync_s:.1f}) = "
            f"{self.rate:,.0f} files/s"
        )


def populate(
    layout: Layout, store_a: StoreA, b_root: Path | None, layout_s: float = 0.0
) -> Populated:
    """Store A (and tree B, unless None) with every artifact of ``layout``."""
    from ephemera import Store

    t0 = time.perf_counter()
    Store.open(store_a.settings()).close()  # creates and migrates the database
    t1 = time.perf_counter()
    everything = range(layout.n)
    store_rows(store_a, layout, everything, sessions=True)
    t2 = time.perf_counter()
    if store_a.blob_url:
        put_objects(store_a.blob_url, layout, everything)
        files = layout.n
    else:
        write_files(layout, everything, store_a.blobs, b_root)
        files = layout.n * (2 if b_root is not None else 1)
    t3 = time.perf_counter()
    if not store_a.blob_url:
        os.sync()
    t4 = time.perf_counter()
    return Populated(layout_s, t1 - t0, t2 - t1, t3 - t2, t4 - t3, files)


def refill(layout: Layout, store_a: StoreA, b_root: Path | None) -> float:
    """Put the expired half back into A (records and files or objects) and B; seconds."""
    t0 = time.perf_counter()
    half = layout.expired_indices()
    store_rows(store_a, layout, half, sessions=False)
    if store_a.blob_url:
        put_objects(store_a.blob_url, layout, half)
    else:
        write_files(layout, half, store_a.blobs, b_root)
        os.sync()
    return time.perf_counter() - t0


def build(n: int, out: Path, database_url: str | None = None) -> tuple[Layout, Populated]:
    """Store A in ``out/A`` and tree B in ``out/B``, with ``n`` artifacts."""
    t0 = time.perf_counter()
    layout = make_layout(n)
    layout_s = time.perf_counter() - t0
    populated = populate(layout, StoreA(out / "A", database_url), out / "B", layout_s)
    return layout, populated


# ---------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.populate", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--size", type=int, required=True, help="artifacts, e.g. 1000000")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    parser.add_argument(
        "--database-url", help="PostgreSQL URL of an empty database (rows by COPY); else SQLite"
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time a plain loop writing the same N files (removed after), for the rate",
    )
    args = parser.parse_args(argv)
    if args.size < 2 * PER_SESSION:
        parser.error(f"--size must be at least {2 * PER_SESSION}")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    layout, populated = build(args.size, args.out, args.database_url)
    print(
        f"{layout.n:,} artifacts in {layout.sessions:,} sessions "
        f"({layout.total_bytes / 2**20:.1f} MiB per tree), {layout.expired_count:,} expired:"
    )
    print(f"  store A in {args.out / 'A'} and tree B in {args.out / 'B'}: {populated.line()}")
    if args.baseline:
        plain_dir = args.out / "plain"
        seconds = plain_loop(layout, plain_dir)
        rate = layout.n / seconds
        print(
            f"  plain loop, the same {layout.n:,} files once: {seconds:.1f} s = {rate:,.0f} "
            f"files/s; the tool {populated.rate / rate:.2f}x its rate"
        )
        shutil.rmtree(plain_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
