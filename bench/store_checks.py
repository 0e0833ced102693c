"""What a benchmark checks after a cleanup of the population layout: exactly the expired half
went (report, records, files or objects), nothing else."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from bench.populate import Layout, StoreA, blob_path, object_key

if TYPE_CHECKING:
    from bench.cleanup_child import ChildRun


def count_files(root: Path, suffix: str | None = None) -> int:
    count = 0
    for _dir, _subdirs, files in os.walk(root):
        count += sum(1 for f in files if suffix is None or f.endswith(suffix))
    return count


def record_counts(store_a: StoreA) -> dict[str, int]:
    """Artifact records by ``storage_class/state``."""
    query = "SELECT storage_class || '/' || state, count(*) FROM artifacts GROUP BY 1"
    if store_a.database_url:
        import psycopg

        with psycopg.connect(store_a.database_url) as pg:
            rows = pg.execute(query).fetchall()
    else:
        conn = sqlite3.connect(store_a.sqlite_path)
        try:
            rows = conn.execute(query).fetchall()
        finally:
            conn.close()
    return {str(k): int(v) for k, v in rows}


def stored_keys(blob_url: str) -> set[str]:
    from ephemera.blobs.s3 import S3BlobStore

    return {stat.key for stat in S3BlobStore.from_url(blob_url).list("sessions/")}


def check_report(run: ChildRun, layout: Layout) -> list[str]:
    """Problems with the report of a `cleanup all` that should have deleted the expired half."""
    problems = []
    half = layout.expired_count
    expired = run.part("expired")
    if expired["deleted_count"] != half:
        problems.append(f"expired deleted {expired['deleted_count']}, expected {half}")
    if run.report["deleted_count"] != half:
        problems.append(f"all deleted {run.report['deleted_count']} in total, expected {half}")
    if run.report["error_count"]:
        problems.append(f"{run.report['error_count']} errors: {run.report['errors'][:3]}")
    return problems


def check_cleanup_all(run: ChildRun, layout: Layout, store_a: StoreA) -> list[str]:
    """Problems with a `cleanup all` that should have deleted exactly the expired half."""
    problems = check_report(run, layout)
    kept = layout.n - layout.expired_count
    if store_a.blob_url:
        keys = stored_keys(store_a.blob_url)
        left = sum(
            1 for i in range(layout.n) if layout.expired[i] and object_key(layout, i) in keys
        )
        stored = len(keys)
    else:
        left = sum(
            1
            for i in layout.expired_indices()
            if blob_path(store_a.blobs, layout, i, marked=False).exists()
        )
        stored = count_files(store_a.blobs / "sessions")
    if left:
        problems.append(f"{left} expired files still stored")
    if stored != kept:
        problems.append(f"{stored} files left in A, expected {kept}")
    counts = record_counts(store_a)
    if counts != {"persistent/ready": kept}:
        problems.append(f"records left in A: {counts}")
    return problems
