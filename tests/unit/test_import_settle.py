"""When a watched file counts as complete: closed after writing, or unchanged for a while."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ephemera.importer.scan import Filter, FoundFile
from ephemera.importer.watch import CLOSED_GRACE_S, Settler, Watcher
from tests.waiting import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settler(root: Path, clock: Clock, settle_s: float = 1.0) -> tuple[Settler, list[FoundFile]]:
    ready: list[FoundFile] = []
    return Settler(root, Filter(), ready.append, settle_s=settle_s, clock=clock), ready


def test_a_file_is_complete_once_size_and_mtime_stay_the_same_for_the_settle_time(
    tmp_path: Path,
) -> None:
    clock = Clock()
    s, ready = settler(tmp_path, clock)
    f = tmp_path / "a.png"
    f.write_bytes(b"1")
    s.note("a.png")
    s.tick()  # first look: size and mtime recorded
    clock.now += 0.9
    s.tick()
    assert ready == []

    with f.open("ab") as out:  # still being written: the wait starts again
        out.write(b"2")
    os.utime(f, ns=(f.stat().st_mtime_ns + 1000, f.stat().st_mtime_ns + 1000))
    clock.now += 0.5
    s.tick()
    clock.now += 0.9
    s.tick()
    assert ready == []

    clock.now += 0.2
    s.tick()
    assert [(r.path, r.size) for r in ready] == [("a.png", 2)]
    assert s.pending() == 0


def test_a_file_closed_after_writing_is_complete_after_a_short_grace(tmp_path: Path) -> None:
    clock = Clock()
    s, ready = settler(tmp_path, clock, settle_s=60)
    (tmp_path / "a.png").write_bytes(b"abc")
    s.note("a.png")
    s.note("a.png", closed=True)
    s.tick()  # first look: the version closed
    assert ready == []
    clock.now += CLOSED_GRACE_S
    s.tick()  # the same a grace later: complete, long before the settle time
    assert [(r.path, r.size) for r in ready] == [("a.png", 3)]


def test_a_file_closed_then_reopened_for_writing_waits_the_settle_time(tmp_path: Path) -> None:
    clock = Clock()
    s, ready = settler(tmp_path, clock, settle_s=5)
    f = tmp_path / "a.png"
    f.write_bytes(b"part 1")
    s.note("a.png", closed=True)
    with f.open("ab") as out:  # opened again before the next look, still being written
        out.write(b", part 2")
        out.flush()
        s.note("a.png")
        s.tick()
        clock.now += 1
        s.tick()
        assert ready == []
    clock.now += 5
    s.tick()
    assert [(r.path, r.size) for r in ready] == [("a.png", 14)]


def test_a_write_then_rename_temporary_is_forgotten_and_the_final_file_found(
    tmp_path: Path,
) -> None:
    """``a.png.new`` is no partial name, but renamed over ``a.png`` within the grace, it is
    never passed on: only ``a.png`` is, complete."""
    clock = Clock()
    s, ready = settler(tmp_path, clock)
    (tmp_path / "a.png").write_bytes(b"old")
    (tmp_path / "a.png.new").write_bytes(b"new version")
    s.note("a.png.new", closed=True)
    s.tick()
    (tmp_path / "a.png.new").rename(tmp_path / "a.png")
    s.forget("a.png.new")  # what the move event does
    s.note("a.png")
    clock.now += CLOSED_GRACE_S
    s.tick()
    clock.now += 1
    s.tick()
    assert [(r.path, r.size) for r in ready] == [("a.png", 11)]
    assert s.pending() == 0


def test_deleted_and_vanished_files_are_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    s, ready = settler(tmp_path, clock)
    (tmp_path / "deleted.png").write_bytes(b"1")
    s.note("deleted.png")
    s.forget("deleted.png")
    s.note("never-there.png", closed=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"1")
    s.note("d/x.png")
    s.forget_folder("d")
    clock.now += 5
    s.tick()
    s.tick()
    assert ready == []
    assert s.pending() == 0


def test_hidden_and_partial_names_are_not_watched(tmp_path: Path) -> None:
    clock = Clock()
    s, ready = settler(tmp_path, clock)
    for name in (".x.png", "y.png.part", "z~"):
        (tmp_path / name).write_bytes(b"1")
        s.note(name, closed=True)
    s.tick()
    assert ready == []


def test_the_files_of_a_folder_moved_in_are_found(tmp_path: Path) -> None:
    clock = Clock()
    s, ready = settler(tmp_path, clock)
    (tmp_path / "batch" / "deep").mkdir(parents=True)
    (tmp_path / "batch" / "1.png").write_bytes(b"1")
    (tmp_path / "batch" / "deep" / "2.png").write_bytes(b"22")
    s.note_folder(tmp_path / "batch")
    s.tick()
    clock.now += 1.5
    s.tick()
    assert sorted(r.path for r in ready) == ["batch/1.png", "batch/deep/2.png"]


def _watch(tmp_path: Path, *, poll: bool) -> tuple[Watcher, list[FoundFile]]:
    ready: list[FoundFile] = []
    lock = threading.Lock()

    def add(found: FoundFile) -> None:
        with lock:
            ready.append(found)

    watcher = Watcher(tmp_path, Filter(), add, settle_s=1.0, poll=poll, poll_interval_s=0.1)
    watcher.start()
    return watcher, ready


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_a_slowly_written_file_is_reported_once_and_complete(tmp_path: Path, poll: bool) -> None:
    watcher, ready = _watch(tmp_path, poll=poll)
    try:
        with (tmp_path / "slow.bin").open("wb") as out:
            for _ in range(5):  # pauses shorter than the settle time
                out.write(b"x" * 1000)
                out.flush()
                time.sleep(0.05)
        (tmp_path / "moved-in.tmp").write_bytes(b"m")
        (tmp_path / "moved-in.tmp").rename(tmp_path / "moved-in.png")
        wait_for(lambda: len(ready) >= 2, 10, lambda: f"two complete files, got {ready}")
        time.sleep(1.2)  # nothing more comes
    finally:
        watcher.stop()
    assert sorted((r.path, r.size) for r in ready) == [("moved-in.png", 1), ("slow.bin", 5000)]
