"""The importer under pressure: a busy server, overlapping versions of a path, broken parts.

A busy or briefly failing server (Unavailable: 429, 5xx) costs a pause and another try, never
a file; a newer version of a path noticed while the older one is imported is imported too; a
follow-up goes only to the latest version; a failing progress display or dead import threads
never hang the run.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

from ephemera.errors import Unavailable
from ephemera.importer import Importer, Plan, Progress
from ephemera.importer import run as run_module
from ephemera.importer.scan import stat_file
from ephemera.models import FollowUp, ImportOrigin
from tests.ledger_fake import FakeTarget
from tests.waiting import wait_for

SOURCE = "host:/photos"


def plan(root: Path, **changes: object) -> Plan:
    return Plan(root=root, session_id="s1", source=SOURCE, **changes)  # type: ignore[arg-type]


def fill(root: Path, count: int) -> None:
    for i in range(count):
        (root / f"f{i}.png").write_bytes(os.urandom(50 + i))


def test_a_busy_server_costs_a_pause_and_another_try_never_a_file(tmp_path: Path) -> None:
    fill(tmp_path, 12)
    refused: list[str] = []

    def busy_twice(origin: ImportOrigin) -> None:
        if refused.count(origin.path) < 2:
            refused.append(origin.path)
            raise Unavailable("at most 1 upload at once per session", retry_after_s=0.01)

    target = FakeTarget(before_read=busy_twice)
    summary = Importer(target, plan(tmp_path, workers=3)).run()

    assert (summary.found, summary.imported, summary.failed) == (12, 12, 0)
    assert len(refused) == 24
    assert len(target.entries_) == 12


def test_a_server_busy_for_good_fails_the_file_after_bounded_tries(tmp_path: Path) -> None:
    fill(tmp_path, 1)
    tries: list[str] = []

    def always_busy(origin: ImportOrigin) -> None:
        tries.append(origin.path)
        raise Unavailable("HTTP 503: down for maintenance", retry_after_s=0.01)

    summary = Importer(FakeTarget(before_read=always_busy), plan(tmp_path)).run()

    assert len(tries) == run_module.ATTEMPTS
    assert (summary.imported, summary.failed) == (0, 1)
    assert summary.errors[0].error == "HTTP 503: down for maintenance"


def test_a_transient_failure_retried_when_watching_is_taken_back_by_its_success(
    tmp_path: Path,
) -> None:
    fill(tmp_path, 2)
    busy = threading.Event()
    busy.set()

    def refuse_f0(origin: ImportOrigin) -> None:
        if origin.path == "f0.png" and busy.is_set():
            raise Unavailable("briefly failing", retry_after_s=0.001)

    target = FakeTarget(before_read=refuse_f0)
    stop = threading.Event()
    seen: list[Progress] = []
    importer = Importer(
        target, plan(tmp_path, watch=True, settle_s=0.1), stop=stop, progress=seen.append
    )
    thread = threading.Thread(target=importer.run)
    thread.start()
    try:
        wait_for(lambda: seen and seen[-1].failed == 1, 10, "f0.png to fail")
        busy.clear()  # the server recovers; the watcher looks at f0.png again
        wait_for(lambda: len(target.entries_) == 2, 10, "f0.png imported on its retry")
    finally:
        stop.set()
        thread.join(10)
    summary = importer._summary

    assert (summary.found, summary.imported, summary.failed, summary.errors) == (2, 2, 0, [])


class _PausingLock:
    """A lock that, when ``pause_after`` says so, runs ``meanwhile`` right after releasing:
    it opens deterministically a gap any scheduler may open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.armed = False
        self.meanwhile: list[object] = []

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()
        if self.armed and self.meanwhile:
            self.armed = False
            action = self.meanwhile.pop()
            assert callable(action)
            action()


def test_a_newer_version_noticed_as_the_older_one_finishes_is_imported(tmp_path: Path) -> None:
    """The gap: the thread importing v1 has found no newer notice; v2's notice comes before
    it has let go of the path. v2 must not be parked where nobody will look."""
    f = tmp_path / "a.png"
    f.write_bytes(b"version 1")
    target = FakeTarget()
    importer = Importer(target, plan(tmp_path))
    lock = _PausingLock()
    importer._lock = lock  # type: ignore[assignment]

    class Again(dict[str, object]):
        def pop(self, key: str, default: object = None) -> object:
            value = super().pop(key, default)
            if value is None and key == "a.png" and lock.meanwhile:
                lock.armed = True  # no newer notice: the gap opens when the lock is let go
            return value

    importer._again = Again()  # type: ignore[assignment]
    v1 = stat_file(tmp_path, "a.png")
    assert v1 is not None

    def newer_version_arrives() -> None:
        f.write_bytes(b"version 2, longer")
        v2 = stat_file(tmp_path, "a.png")
        assert v2 is not None
        importer._handle(v2)

    lock.meanwhile.append(newer_version_arrives)
    importer._handle(v1)

    assert lock.meanwhile == []  # the gap was opened
    assert [e.origin.size for e in target.entries_] == [9, 17]
    assert importer._busy == set()
    assert dict(importer._again) == {}


def test_follow_ups_at_start_go_only_to_the_latest_version_of_each_path(tmp_path: Path) -> None:
    f = tmp_path / "a.png"
    f.write_bytes(b"v1")
    target = FakeTarget()
    Importer(target, plan(tmp_path)).run()
    f.write_bytes(b"version 2")
    Importer(target, plan(tmp_path)).run()  # two versions, neither with a task
    then = FollowUp("sample-upper")

    summary = Importer(target, plan(tmp_path, then=then)).run()

    old, new = target.by_path()["a.png"]
    assert summary.tasks == [f"t-{new.artifact_id}"]
    assert old.task_id is None
    assert target.follow_ups == 1


def test_a_failing_progress_display_never_ends_an_import_thread(tmp_path: Path) -> None:
    fill(tmp_path, 30)

    def broken(p: Progress) -> None:
        raise RuntimeError("the terminal went away")

    target = FakeTarget()
    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(
            Importer(target, plan(tmp_path, workers=2), progress=broken).run()
        )
    )
    thread.start()
    thread.join(20)

    assert not thread.is_alive(), "the run hung"
    assert len(target.entries_) == 30


def test_dead_import_threads_never_hang_the_run(tmp_path: Path) -> None:
    fill(tmp_path, 40)
    importer = Importer(FakeTarget(), plan(tmp_path, workers=2))

    # Threads that ended early, as a crash no handler caught would end them.
    importer._work = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=importer.run, daemon=True)
    thread.start()
    thread.join(20)

    assert not thread.is_alive(), "the run hung on a queue nobody reads"
    assert importer.stop.is_set()
