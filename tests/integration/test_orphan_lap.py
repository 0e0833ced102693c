"""The scheduled orphan reconciliation: a lap over every session, one bounded slice per tick,
from a cursor that outlives the process; explicit ``orphaned`` still walks everything."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ephemera import Settings, Store
from ephemera.cleanup import CleanupReport
from ephemera.scheduler import CleanupScheduler
from ephemera.testing import ManualClock
from tests.conftest import MakeSettings

CONTRACT = True

HOUR = 3600
SLICE = 2
STRAY = "01a1fcac-0000-7000-8000-000000000000"
GHOST = "01a1fcac-0000-7000-8000-000000000001"
# s0 s1 s1z s2 s3 s4 s5 in name order; slices of two: [s0 s1] [s1z s2] [s3 s4] [s5].
SESSIONS = [f"s{i}" for i in range(6)]


@pytest.fixture
def lap_settings(make_settings: MakeSettings) -> Settings:
    return make_settings(orphan_slice_sessions=SLICE, orphan_interval_s=HOUR)


@pytest.fixture
def lap_store(lap_settings: Settings, clock: ManualClock) -> Iterator[Store]:
    with Store.open(lap_settings, clock=clock) as opened:
        clock.catch_up()
        yield opened


def plant(store: Store, clock: ManualClock) -> None:
    """Six sessions with one artifact each, a stray blob in s4 and a session folder with no
    record (s1z), then time past the grace period."""
    for sid in SESSIONS:
        store.create_session(sid, idle_timeout_s=None)
        store.put_artifact(sid, b"kept", name="k.bin")
    for key in (f"sessions/s4/{STRAY}", f"sessions/s1z/{GHOST}"):
        writer = store.blobs.writer(key)
        writer.write(b"orphan")
        writer.commit()
    clock.catch_up()  # blobs are dated by the real clock: however slow the set-up was
    clock.advance(HOUR + 1)


def tick(store: Store, *, dry_run: bool = False) -> CleanupReport:
    return store.cleanup("orphaned", incremental=True, dry_run=dry_run, details=True)


def found(report: CleanupReport) -> list[str]:
    return sorted(i.id for i in report.items)


def part(report: CleanupReport, operation: str) -> CleanupReport:
    return next(r for r in report.reports if r.operation == operation)


def stored(store: Store) -> set[str]:
    return {b.key for b in store.blobs.list("sessions/")}


def test_a_lap_finds_each_orphan_in_its_slice_and_not_before(
    lap_store: Store, clock: ManualClock
) -> None:
    plant(lap_store, clock)
    first = tick(lap_store)
    assert found(first) == []
    assert first.slice == {
        "after": None,
        "through": "s1",
        "sessions": 2,
        "artifacts": 2,
        "lap_done": False,
    }
    second = tick(lap_store)
    assert found(second) == [f"sessions/s1z/{GHOST}"]
    assert second.slice == {
        "after": "s1",
        "through": "s2",
        "sessions": 2,
        "artifacts": 2,
        "lap_done": False,
    }
    assert f"sessions/s4/{STRAY}" in stored(lap_store)  # its slice has not come yet
    third = tick(lap_store)
    assert found(third) == [f"sessions/s4/{STRAY}"]
    last = tick(lap_store)
    assert last.slice == {
        "after": "s4",
        "through": "s5",
        "sessions": 1,
        "artifacts": 1,
        "lap_done": True,
    }
    assert stored(lap_store) == {
        f"sessions/{sid}/{a.id}" for sid in SESSIONS for a in lap_store.list_artifacts(sid).items
    }


def test_a_slice_stops_at_its_bound_of_artifacts(
    make_settings: MakeSettings, clock: ManualClock
) -> None:
    # Sessions of 3, 3, 1, 4 and 1 artifacts, five a slice: whole sessions, the one that
    # reaches the bound included, however many sessions that is.
    settings = make_settings(orphan_slice_artifacts=5, orphan_interval_s=HOUR)
    sizes = {"a": 3, "b": 3, "c": 1, "d": 4, "e": 1}
    with Store.open(settings, clock=clock) as opened:
        clock.catch_up()
        for sid, count in sizes.items():
            opened.create_session(sid, idle_timeout_s=None)
            for i in range(count):
                opened.put_artifact(sid, b"kept", name=f"{i}.bin")
        slices = [tick(opened).slice for _ in range(3)]
    assert slices == [
        {"after": None, "through": "b", "sessions": 2, "artifacts": 6, "lap_done": False},
        {"after": "b", "through": "d", "sessions": 2, "artifacts": 5, "lap_done": False},
        {"after": "d", "through": "e", "sessions": 1, "artifacts": 1, "lap_done": True},
    ]


def test_the_next_lap_starts_an_interval_after_one_ends(
    lap_store: Store, clock: ManualClock
) -> None:
    plant(lap_store, clock)
    for _ in range(4):
        tick(lap_store)
    waiting = tick(lap_store)
    assert waiting.slice is not None
    assert waiting.slice["sessions"] == 0
    clock.advance(HOUR)
    assert tick(lap_store).slice == {
        "after": None,
        "through": "s1",
        "sessions": 2,
        "artifacts": 2,
        "lap_done": False,
    }


def test_the_cursor_survives_a_restart(
    lap_settings: Settings, lap_store: Store, clock: ManualClock
) -> None:
    plant(lap_store, clock)
    tick(lap_store)
    tick(lap_store)
    lap_store.close()
    with Store.open(lap_settings, clock=clock) as reopened:
        resumed = tick(reopened)
        assert resumed.slice == {
            "after": "s2",
            "through": "s4",
            "sessions": 2,
            "artifacts": 3,
            "lap_done": False,
        }
        assert found(resumed) == [f"sessions/s4/{STRAY}"]


def test_a_tick_lists_a_bounded_number_of_folders(
    lap_store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant(lap_store, clock)
    listed: list[str] = []
    blobs = lap_store.context.blobs
    real = blobs.list_children

    def counting(prefix: str, after: str | None = None) -> Iterator[str]:
        listed.append(prefix if after is None else f"{prefix} after {after}")
        return real(prefix, after)

    monkeypatch.setattr(blobs, "list_children", counting)
    tick(lap_store)
    # The session names, then one folder per session of the slice.
    assert listed == ["sessions/", "sessions/s0/", "sessions/s1/"]
    listed.clear()
    tick(lap_store)
    # The next slice lists the session names from its cursor on (S3: from that key on).
    assert listed == ["sessions/ after s1", "sessions/s2/"]
    listed.clear()
    lap_store.cleanup("orphaned")
    # Explicit: every session folder (s1z, with no record, is walked whole by ``list``).
    assert listed == ["sessions/"] + [f"sessions/{sid}/" for sid in SESSIONS]


def test_explicit_orphaned_and_all_walk_the_whole_store_and_leave_the_cursor(
    lap_store: Store, clock: ManualClock
) -> None:
    plant(lap_store, clock)
    dry = lap_store.cleanup("all", dry_run=True, details=True)
    assert found(part(dry, "orphaned")) == [f"sessions/s1z/{GHOST}", f"sessions/s4/{STRAY}"]
    report = lap_store.cleanup("orphaned", details=True)
    assert found(report) == [f"sessions/s1z/{GHOST}", f"sessions/s4/{STRAY}"]
    assert report.slice is None
    assert lap_store.catalog.cleanup_cursor("orphans") is None
    assert tick(lap_store).slice == {
        "after": None,
        "through": "s1",
        "sessions": 2,
        "artifacts": 2,
        "lap_done": False,
    }


def test_a_dry_slice_reports_exactly_what_the_real_slice_deletes(
    lap_store: Store, clock: ManualClock
) -> None:
    plant(lap_store, clock)
    tick(lap_store)
    for _ in range(2):
        dry = tick(lap_store, dry_run=True)
        again = tick(lap_store, dry_run=True)  # a dry slice leaves the cursor where it is
        real = tick(lap_store)
        assert dry.slice == again.slice == real.slice
        assert [(i.kind, i.id, i.size, i.rule) for i in dry.items] == [
            (i.kind, i.id, i.size, i.rule) for i in real.items
        ]
        assert (dry.deleted_count, dry.deleted_size_bytes) == (
            real.deleted_count,
            real.deleted_size_bytes,
        )
        assert real.deleted_count == 1


def test_the_scheduled_tick_runs_a_slice_and_the_audit_log_says_which(
    lap_store: Store, clock: ManualClock
) -> None:
    plant(lap_store, clock)
    report = CleanupScheduler(lap_store).tick()
    assert report is not None
    orphaned = part(report, "orphaned")
    assert orphaned.slice == {
        "after": None,
        "through": "s1",
        "sessions": 2,
        "artifacts": 2,
        "lap_done": False,
    }
    entry = lap_store.audit_log(action="cleanup.orphaned").items[0]
    assert entry.actor == "scheduler"
    assert entry.params == {"dry_run": False, "incremental": True}
    result: dict[str, Any] = entry.result or {}
    assert result["slice"] == orphaned.slice
