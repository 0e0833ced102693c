"""Usage samples (the overview's charts): what a sample counts, how long samples are kept,
and the order they come back in; on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.testing import ManualClock
from tests.conftest import WITH_SAMPLES

CONTRACT = True

HOUR = 3600


@pytest.fixture
def usage_store(database: str | None, tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    """A store on the test's database (the blob store does not matter here), samples kept
    for an hour."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database,
        usage_retention_s=HOUR,
        processors=WITH_SAMPLES,
    )
    with Store.open(settings, clock=clock) as opened:
        clock.catch_up()
        yield opened


def test_a_sample_counts_open_sessions_ready_artifacts_their_bytes_and_active_tasks(
    usage_store: Store,
) -> None:
    store = usage_store
    for sid in ("a", "b", "gone", "leaving"):
        store.create_session(sid)
    kept = store.put_artifact("a", b"x" * 10, name="kept.bin")
    store.put_artifact("a", b"y" * 20, name="temp.bin", storage="temporary")
    dropped = store.put_artifact("b", b"z" * 40, name="dropped.bin")
    store.put_artifact("gone", b"w" * 80, name="closed.bin")
    # A deletion interrupted before its bytes went: no longer a ready artifact.
    assert store.catalog.mark_artifact_deleting("b", dropped.id, store.clock.now()) is not None
    store.close_session("gone")
    # A close begun and not yet finished: no longer an open session.
    assert store.catalog.begin_close("leaving", store.clock.now()) is not None
    store.submit_task("a", "sample-upper", [kept.id])  # pending: no worker runs it
    cancelled = store.submit_task("a", "sample-upper", [kept.id])
    store.cancel_task("a", cancelled.id)

    sample = store.record_usage()

    assert (sample.sessions, sample.artifacts, sample.bytes) == (2, 2, 30)
    assert sample.temporary_bytes == 20
    assert sample.tasks_active == 1
    assert sample.at == store.clock.now()
    assert store.usage_history() == [sample]


def test_samples_older_than_the_retention_are_dropped_when_the_next_is_recorded(
    usage_store: Store, clock: ManualClock
) -> None:
    store = usage_store
    first = store.record_usage()
    clock.advance(HOUR / 2)
    second = store.record_usage()
    clock.advance(HOUR / 2)
    # The first is now exactly an hour old: past its retention.
    third = store.record_usage()

    # A span longer than the retention shows what the table still holds.
    kept = store.usage_history(10 * HOUR)
    assert [s.at for s in kept] == [second.at, third.at]
    assert first.at not in [s.at for s in kept]


def test_the_history_comes_oldest_first_and_covers_the_span_asked_for(
    usage_store: Store, clock: ManualClock
) -> None:
    store = usage_store
    times = []
    for count in range(3):
        store.create_session(f"s{count}")
        times.append(store.record_usage().at)
        clock.advance(60)

    everything = store.usage_history()
    assert [s.at for s in everything] == times
    assert [s.sessions for s in everything] == [1, 2, 3]
    # Now is 60 s after the last: the last 150 s hold the two latest, still oldest first.
    assert [s.at for s in store.usage_history(150)] == times[1:]
