"""Watching with the real inotify observer: which events make a file complete, and when.

A copy that sets its mtime after closing (``shutil.copy2``, cameras) counts at its final mtime,
so a restart finds nothing new; a touch is a new version, in the watch as in a rerun; a
write-then-rename temporary is never imported; the importer's own reads wake nothing; a watch
that cannot start leaves nothing running.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pytest
from watchdog.events import FileAttribEvent, FileSystemEvent
from watchdog.observers.inotify import InotifyEmitter

from ephemera.importer import Importer, Plan
from ephemera.importer.scan import Filter, FoundFile
from ephemera.importer.watch import Settler, Watcher, _Events
from tests.ledger_fake import FakeTarget
from tests.waiting import wait_for

SOURCE = "host:/photos"


def plan(root: Path, **changes: object) -> Plan:
    return Plan(root=root, session_id="s1", source=SOURCE, **changes)  # type: ignore[arg-type]


class Watching:
    """An importer watching ``root`` in a thread, until ``close``."""

    def __init__(self, target: FakeTarget, root: Path) -> None:
        self.stop = threading.Event()
        self.importer = Importer(target, plan(root, watch=True, settle_s=0.5), stop=self.stop)
        self.thread = threading.Thread(target=self.importer.run)
        self.thread.start()

    def idle(self) -> bool:
        watcher = self.importer._watcher
        return watcher is not None and watcher.settler.pending() == 0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_an_attribute_change_is_noted_like_a_write(tmp_path: Path) -> None:
    settler = Settler(tmp_path, Filter(), lambda found: None)
    _Events(tmp_path, settler).on_any_event(FileAttribEvent(str(tmp_path / "a.png")))
    assert settler.pending() == 1


def test_a_copy_keeping_its_mtime_is_imported_once_at_that_mtime_and_a_restart_adds_nothing(
    tmp_path: Path,
) -> None:
    outside, root = tmp_path / "camera", tmp_path / "watched"
    outside.mkdir()
    root.mkdir()
    (outside / "shot.png").write_bytes(os.urandom(200_000))
    os.utime(outside / "shot.png", ns=(1_600_000_000_000_000_000,) * 2)
    target = FakeTarget()
    watching = Watching(target, root)
    try:
        shutil.copy2(outside / "shot.png", root / "shot.png")
        wait_for(lambda: target.entries_, 10, "the copy imported")
        wait_for(watching.idle, 5, "the watch to settle")
    finally:
        watching.close()
    [entry] = target.entries_
    assert entry.origin.mtime_ns == 1_600_000_000_000_000_000

    again = Importer(target, plan(root)).run()

    assert (again.imported, again.skipped) == (0, 1)


def test_a_touched_file_is_a_new_version_in_the_watch_as_in_a_rerun(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"picture")
    target = FakeTarget()
    watching = Watching(target, tmp_path)
    try:
        wait_for(lambda: target.entries_, 10, "a.png imported")
        os.utime(tmp_path / "a.png", ns=(1_700_000_000_000_000_000,) * 2)
        wait_for(lambda: len(target.entries_) == 2, 10, "the touched a.png imported again")
    finally:
        watching.close()
    assert target.entries_[-1].origin.mtime_ns == 1_700_000_000_000_000_000

    again = Importer(target, plan(tmp_path)).run()

    assert (again.imported, again.skipped) == (0, 1)


def test_a_file_written_then_renamed_into_place_is_imported_not_its_temporary(
    tmp_path: Path,
) -> None:
    target = FakeTarget()
    watching = Watching(target, tmp_path)
    try:
        with (tmp_path / "a.png.new").open("wb") as out:
            out.write(b"the final picture")
        (tmp_path / "a.png.new").rename(tmp_path / "a.png")
        wait_for(lambda: target.entries_, 10, "a.png imported")
        wait_for(watching.idle, 5, "the watch to settle")
    finally:
        watching.close()
    assert [(e.origin.path, e.origin.size) for e in target.entries_] == [("a.png", 17)]
    assert watching.importer._summary.failed == 0  # the temporary was not even tried


def test_reading_the_watched_files_wakes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.png").write_bytes(b"x" * 1000)
    seen: list[str] = []
    note = _Events.on_any_event

    def spy(self: _Events, event: FileSystemEvent) -> None:
        seen.append(type(event).__name__)
        note(self, event)

    monkeypatch.setattr(_Events, "on_any_event", spy)
    found: list[FoundFile] = []
    watcher = Watcher(tmp_path, Filter(), found.append, settle_s=0.2)
    watcher.start()
    try:
        for _ in range(20):
            (tmp_path / "a.png").read_bytes()
        (tmp_path / "b.png").write_bytes(b"y")  # then something that does count
        wait_for(lambda: found, 5, "b.png")
    finally:
        watcher.stop()
    assert "FileOpenedEvent" not in seen
    assert "FileClosedNoWriteEvent" not in seen
    assert [f.path for f in found] == ["b.png"]


def test_a_watch_that_cannot_start_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_watches_left(self: InotifyEmitter) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyEmitter, "on_thread_start", no_watches_left)

    with pytest.raises(OSError, match="inotify watch limit"):
        Importer(FakeTarget(), plan(tmp_path, watch=True)).run()

    def ours() -> list[str]:  # watchdog keeps its one inotify dispatcher thread: not ours
        return [t.name for t in threading.enumerate() if t.name.startswith("import-")]

    wait_for(lambda: not ours(), 5, lambda: f"the import threads to end: {ours()}")
