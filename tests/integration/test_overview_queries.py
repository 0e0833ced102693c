"""The overview's reads through the library: the largest sessions, the ones idle the
longest, and when the next scheduled cleanup is due; on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.scheduler import LOCK, CleanupScheduler, next_tick
from ephemera.testing import ManualClock

CONTRACT = True


@pytest.fixture
def overview_store(database: str | None, tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database, cleanup_interval_s=600)
    with Store.open(settings, clock=clock) as opened:
        clock.catch_up()
        yield opened


def test_the_largest_sessions_come_by_ready_bytes_largest_first_and_empty_ones_not_at_all(
    overview_store: Store,
) -> None:
    store = overview_store
    for sid in ("small", "big", "medium", "empty", "was-big"):
        store.create_session(sid)
    store.put_artifact("small", b"s" * 10, name="a")
    store.put_artifact("small", b"s" * 5, name="b")
    store.put_artifact("big", b"b" * 300, name="a")
    store.put_artifact("medium", b"m" * 100, name="a")
    huge = store.put_artifact("was-big", b"w" * 1000, name="a")
    store.put_artifact("was-big", b"w" * 1, name="b")
    # A deletion interrupted before its bytes went: no longer a ready artifact, not counted.
    assert store.catalog.mark_artifact_deleting("was-big", huge.id, store.clock.now())

    largest = store.largest_sessions(10)

    assert [(s.id, s.artifact_count, s.total_bytes) for s in largest] == [
        ("big", 1, 300),
        ("medium", 1, 100),
        ("small", 2, 15),
        ("was-big", 1, 1),
    ]
    assert [s.id for s in store.largest_sessions(2)] == ["big", "medium"]


def test_the_idlest_sessions_are_the_open_ones_with_the_oldest_activity_first(
    overview_store: Store, clock: ManualClock
) -> None:
    store = overview_store
    tokens = {}
    for sid in ("closing", "first", "second", "third"):
        tokens[sid] = store.create_session(sid).token
        clock.advance(60)
    store.put_artifact("second", b"x" * 7, name="a")
    # Idle the longest, but on its way out (a close that has not finished): not listed.
    assert store.catalog.begin_close("closing", clock.now()) is not None
    # A request with its token makes the first session the most recently active.
    store.authenticate("first", tokens["first"])

    idlest = store.idlest_sessions(10)

    assert [s.id for s in idlest] == ["second", "third", "first"]
    assert [(s.artifact_count, s.total_bytes) for s in idlest] == [(1, 7), (0, 0), (0, 0)]
    assert [s.id for s in store.idlest_sessions(1)] == ["second"]


def test_the_next_scheduled_cleanup_is_due_one_interval_after_the_last_tick_began(
    overview_store: Store, clock: ManualClock
) -> None:
    store = overview_store
    assert next_tick(store) is None  # no scheduled cleanup has run

    ran_at = clock.now()
    assert CleanupScheduler(store).tick() is not None
    clock.advance(30)

    assert next_tick(store) == ran_at + timedelta(seconds=600)


def test_a_lock_held_longer_puts_the_next_tick_at_its_expiry(
    overview_store: Store, clock: ManualClock, database: str | None
) -> None:
    if database is not None:
        pytest.skip("PostgreSQL's scheduler lock is an advisory lock, without an expiry")
    store = overview_store
    ran_at = clock.now()
    scheduler = CleanupScheduler(store)
    scheduler.tick()
    # A run longer than the interval renews the lock (see CleanupScheduler._renew).
    renewed = ran_at + timedelta(seconds=900)
    assert store.try_lock(LOCK, scheduler.holder, renewed)

    assert store.lock_expiry(LOCK) == renewed
    assert next_tick(store) == renewed
    assert store.lock_expiry("never-taken") is None
