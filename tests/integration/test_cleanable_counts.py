"""What the stats say each cleanup would delete is counted by set-based queries, not by dry
runs; the counts equal what a dry run at the same instant reports, on a store holding
leases, retention, expired and idle items, old results, interrupted deletions and expired
resumable uploads; on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemera import Settings, Store
from ephemera.cleanup.engine import run_passes
from ephemera.cleanup.records import CleanupReport, CleanupRequest
from ephemera.context import Context
from ephemera.testing import ManualClock

CONTRACT = True

HOUR = 3600
DAY = 86400
COUNTED = ("expired", "idle-sessions", "old-results")


@pytest.fixture
def stats_store(database: str | None, tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database,
        scheduled_cleanup=False,
        result_retention_days=1.0,
        tus_upload_ttl_s=HOUR,
        quota_high_water_bytes=10**9,
        lease_max_ttl_s=4 * DAY,
    )
    with Store.open(settings, clock=clock) as opened:
        clock.catch_up()
        yield opened


def a_store_with_everything_cleanup_looks_at(store: Store, clock: ManualClock) -> None:
    """Every rule has items it selects and items it must spare."""
    now = clock.now
    idle = store.create_session("idle", idle_timeout_s=HOUR).session.id
    store.put_artifact(idle, b"i" * 11, name="a.bin")
    idle_leased = store.create_session("idle-leased", idle_timeout_s=HOUR).session.id
    store.put_artifact(idle_leased, b"l" * 13, name="a.bin")
    store.take_lease(idle_leased, ttl_s=3 * DAY)
    idle_retained = store.create_session("idle-retained", idle_timeout_s=HOUR).session.id
    kept = store.put_artifact(idle_retained, b"r" * 17, name="a.bin")
    store.retain_artifact(idle_retained, kept.id, now() + timedelta(days=3))
    closing = store.create_session("closing", idle_timeout_s=None).session.id
    # Retention never holds back a close already begun.
    held = store.put_artifact(closing, b"c" * 19, name="a.bin")
    store.retain_artifact(closing, held.id, now() + timedelta(days=3))

    work = store.create_session("work", idle_timeout_s=None).session.id
    for n, storage in enumerate(("temporary", "temporary", "temporary", "persistent")):
        store.put_artifact(work, b"t" * (23 + n), name=f"{n}.bin", storage=storage)
    temporary = [a for a in store.list_artifacts(work).items if a.storage_class == "temporary"]
    store.retain_artifact(work, temporary[1].id, now() + timedelta(days=3))
    for n, kind in enumerate(("output", "result", "output", "input")):
        store.put_artifact(work, b"o" * (29 + n), name=f"o{n}.bin", kind=kind, producer="t1")
    outputs = [a for a in store.list_artifacts(work).items if a.producer == "t1"]
    store.retain_artifact(work, outputs[0].id, now() + timedelta(days=3))
    store.take_lease(work, ttl_s=3 * DAY, artifact_ids=[temporary[0].id, outputs[1].id])
    interrupted = store.put_artifact(work, b"d" * 31, name="d.bin", kind="output", producer="t2")

    # Resumable uploads: one abandoned part-way, one finished (bookkeeping only).
    for body, finish in ((b"u" * 37, False), (b"f" * 41, True)):
        size = len(body) + (0 if finish else 5)
        upload = store.resumable.create(work, size, {"filename": "u.bin"})
        appender = store.resumable.begin_append(work, upload.id, 0)
        appender.write([body])
        appender.finish()

    clock.advance(2 * DAY)
    store.catalog.mark_artifact_deleting(work, interrupted.id, now())
    store.catalog.begin_close(closing, now())
    # A temporary artifact not expired yet: selected by no rule.
    store.put_artifact(work, b"n" * 43, name="new.bin", storage="temporary", expires_in_s=60)


def test_the_counted_cleanable_figures_equal_each_operations_dry_run(
    stats_store: Store, clock: ManualClock
) -> None:
    store = stats_store
    a_store_with_everything_cleanup_looks_at(store, clock)

    cleanable = store.cleanup_stats()["cleanable"]

    for operation in (*COUNTED, "quota"):
        dry = store.cleanup(operation, dry_run=True)
        assert cleanable[operation] == {
            "count": dry.deleted_count,
            "bytes": dry.deleted_size_bytes,
            "skipped_protected": dry.skipped_protected,
        }, operation
    # Each rule has something to delete and something it spares, so the test compares both.
    for operation in COUNTED:
        assert cleanable[operation]["count"] >= 2, operation
        assert cleanable[operation]["skipped_protected"] >= 1, operation


def test_the_stats_run_no_dry_run_of_the_counted_operations(
    stats_store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stats_store
    a_store_with_everything_cleanup_looks_at(store, clock)
    ran: list[str] = []

    def recording(context: Context, request: CleanupRequest, **kwargs: Any) -> CleanupReport:
        ran.append(request.operation)
        return run_passes(context, request, **kwargs)

    monkeypatch.setattr("ephemera.cleanup.stats.run_passes", recording)
    store.cleanup_stats()
    assert not set(ran) & set(COUNTED)
