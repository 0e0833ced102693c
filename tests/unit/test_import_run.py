"""The importer against an in-memory ledger: exactly once, skips, changes, errors, stopping."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from ephemera.errors import NotFound, TooLarge
from ephemera.importer import Filter, Importer, Plan, Progress, Summary, scan
from ephemera.models import FollowUp, ImportOrigin
from tests.ledger_fake import FakeTarget
from tests.waiting import wait_for

SOURCE = "host:/photos"


def plan(root: Path, **changes: object) -> Plan:
    return Plan(root=root, session_id="s1", source=SOURCE, **changes)  # type: ignore[arg-type]


def fill(root: Path, count: int) -> dict[str, bytes]:
    files = {f"d{i % 3}/f{i}.png": os.urandom(100 + i) for i in range(count)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def run(target: FakeTarget, the_plan: Plan, **kwargs: object) -> Summary:
    return Importer(target, the_plan, **kwargs).run()  # type: ignore[arg-type]


def test_every_file_is_imported_once_with_its_bytes_and_sha256(tmp_path: Path) -> None:
    files = fill(tmp_path, 30)
    target = FakeTarget()

    summary = run(target, plan(tmp_path))

    assert (summary.found, summary.imported, summary.skipped, summary.failed) == (30, 30, 0, 0)
    assert summary.bytes == sum(len(d) for d in files.values())
    by_path = target.by_path()
    assert sorted(by_path) == sorted(files)
    for rel, data in files.items():
        [entry] = by_path[rel]
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert target.stored[entry.artifact_id] == data
        st = (tmp_path / rel).stat()
        assert entry.origin == ImportOrigin(SOURCE, rel, st.st_size, st.st_mtime_ns)


def test_a_rerun_skips_what_the_ledger_holds_without_reading_it(tmp_path: Path) -> None:
    fill(tmp_path, 12)
    target = FakeTarget()
    run(target, plan(tmp_path))
    puts, reads = target.puts, target.reads

    summary = run(target, plan(tmp_path))

    assert (summary.found, summary.imported, summary.skipped) == (12, 0, 12)
    # Not even asked: the importer knows them from the ledger it loaded.
    assert (target.puts, target.reads) == (puts, reads)
    assert len(target.entries_) == 12


def test_a_changed_file_becomes_a_new_artifact_that_replaces_the_old(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    target = FakeTarget()
    run(target, plan(tmp_path))
    (tmp_path / "d1/f1.png").write_bytes(b"new content")

    summary = run(target, plan(tmp_path))

    assert (summary.imported, summary.skipped) == (1, 2)
    old, new = target.by_path()["d1/f1.png"]
    assert new.replaces == old.artifact_id
    assert target.stored[new.artifact_id] == b"new content"


def test_per_file_errors_are_listed_and_counted_and_the_rest_is_imported(tmp_path: Path) -> None:
    files = fill(tmp_path, 10)
    # The order the scan finds them in (the same for an unchanged tree).
    order = [f.path for f in scan(tmp_path, Filter())]
    refused, victim = order[2], order[4]

    def refuse(origin: ImportOrigin) -> None:
        if origin.path == refused:
            raise TooLarge("the artifact exceeds the upload limit")

    def delete_one_after_the_scan(progress: Progress) -> None:
        # Called as each file is found, before it is queued: it vanishes before the read.
        if progress.found == 5:
            (tmp_path / victim).unlink(missing_ok=True)

    target = FakeTarget(before_read=refuse)
    summary = run(target, plan(tmp_path, workers=2), progress=delete_one_after_the_scan)

    assert summary.failed == 2
    assert sorted((e.path, e.error) for e in summary.errors) == sorted(
        [
            (refused, "the artifact exceeds the upload limit"),
            (victim, "vanished before it was read"),
        ]
    )
    assert summary.imported == 8
    assert sorted(target.by_path()) == sorted(set(files) - {refused, victim})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_a_listed_error(tmp_path: Path) -> None:
    fill(tmp_path, 2)
    (tmp_path / "d1/f1.png").chmod(0)
    summary = run(FakeTarget(), plan(tmp_path))
    assert [(e.path, e.error) for e in summary.errors] == [("d1/f1.png", "permission denied")]
    assert summary.imported == 1


def test_a_file_changed_while_read_is_not_imported_as_that_version(tmp_path: Path) -> None:
    fill(tmp_path, 2)

    def grow(origin: ImportOrigin) -> None:
        if origin.path == "d0/f0.png":
            with (tmp_path / origin.path).open("ab") as f:
                f.write(b"more")

    target = FakeTarget(before_read=grow)
    summary = run(target, plan(tmp_path))

    assert [(e.path, e.error) for e in summary.errors] == [
        ("d0/f0.png", "changed while it was read; not imported")
    ]
    assert sorted(target.by_path()) == ["d1/f1.png"]


def test_a_file_rewritten_in_place_while_read_is_not_imported(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # several chunks

    def rewrite_start(origin: ImportOrigin) -> None:
        with (tmp_path / origin.path).open("r+b") as f:  # same size, new bytes and mtime
            f.write(b"changed")
        st = (tmp_path / origin.path).stat()
        os.utime(tmp_path / origin.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    target = FakeTarget(during_read=rewrite_start)
    summary = run(target, plan(tmp_path))

    assert [(e.path, e.error) for e in summary.errors] == [
        ("big.bin", "changed while it was read; not imported")
    ]
    assert target.entries_ == []


def test_watching_a_file_changed_while_read_is_imported_once_it_settles(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"first")
    changed = threading.Event()

    def rewrite_once(origin: ImportOrigin) -> None:
        if not changed.is_set():
            changed.set()
            (tmp_path / "a.png").write_bytes(b"second, longer")

    target = FakeTarget(before_read=rewrite_once)
    stop = threading.Event()
    importer = Importer(target, plan(tmp_path, watch=True, settle_s=0.2), stop=stop)
    thread = threading.Thread(target=importer.run)
    thread.start()
    try:
        wait_for(lambda: target.entries_, 10, "the settled file imported")
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    [entry] = target.entries_
    assert target.stored[entry.artifact_id] == b"second, longer"


def test_stop_lets_in_flight_files_finish_and_a_rerun_imports_the_rest_once(
    tmp_path: Path,
) -> None:
    files = fill(tmp_path, 40)
    stop = threading.Event()

    def stop_after_a_few(origin: ImportOrigin) -> None:
        if len(target.entries_) >= 5:
            stop.set()

    target = FakeTarget(before_read=stop_after_a_few)
    first = run(target, plan(tmp_path, workers=2), stop=stop)

    # The five, one more each worker may have committed meanwhile, and the files in flight
    # when the stop came; the ones queued (up to eight) were left.
    assert 5 <= first.imported <= 5 + 2 + 2
    assert first.failed == 0
    assert first.found == first.imported  # queued but not started: not counted
    second = run(target, plan(tmp_path))
    assert second.imported == 40 - first.imported
    assert sorted(target.by_path()) == sorted(files)
    assert all(len(entries) == 1 for entries in target.by_path().values())


def test_abort_cuts_an_upload_short_and_stores_nothing(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    stop, abort = threading.Event(), threading.Event()

    def abort_now(origin: ImportOrigin) -> None:
        stop.set()
        abort.set()

    target = FakeTarget(before_read=abort_now)
    summary = run(target, plan(tmp_path), stop=stop, abort=abort)

    assert (summary.imported, summary.failed, summary.found) == (0, 0, 0)
    assert target.entries_ == []


def test_the_queue_is_bounded_the_scan_waits_for_the_uploads(tmp_path: Path) -> None:
    fill(tmp_path, 100)
    release = threading.Event()
    seen: list[int] = []

    def hold(origin: ImportOrigin) -> None:
        release.wait(10)

    target = FakeTarget(before_read=hold)
    importer = Importer(target, plan(tmp_path, workers=2), progress=lambda p: seen.append(p.found))
    thread = threading.Thread(target=importer.run)
    thread.start()
    time.sleep(0.5)
    found_while_blocked = max(seen)
    release.set()
    thread.join(20)
    # Two files held by the workers, eight queued, one waiting to be queued.
    assert found_while_blocked <= 2 + 2 * 4 + 1
    assert len(target.entries_) == 100


def test_then_submits_a_task_per_file_and_a_restart_submits_the_missing_ones(
    tmp_path: Path,
) -> None:
    fill(tmp_path, 4)
    target = FakeTarget()
    run(target, plan(tmp_path))  # a run without --then: entries without a task
    then = FollowUp("sample-upper", {"x": 1})

    summary = run(target, plan(tmp_path, then=then))

    assert sorted(summary.tasks) == sorted(f"t-{e.artifact_id}" for e in target.entries_)
    assert target.follow_ups == 4
    again = run(target, plan(tmp_path, then=then))
    assert again.tasks == []
    assert target.follow_ups == 4

    (tmp_path / "new.png").write_bytes(b"n")
    third = run(target, plan(tmp_path, then=then))
    [new] = target.by_path()["new.png"]
    assert third.tasks == [f"t-{new.artifact_id}"]


def test_an_unknown_session_or_processor_fails_before_anything_is_read(tmp_path: Path) -> None:
    fill(tmp_path, 2)
    target = FakeTarget()
    with pytest.raises(NotFound):
        run(target, Plan(root=tmp_path, session_id="other", source=SOURCE))
    with pytest.raises(NotFound):
        run(target, plan(tmp_path, then=FollowUp("no-such-processor")))
    assert target.reads == 0


def test_a_session_that_goes_away_mid_run_ends_it(tmp_path: Path) -> None:
    fill(tmp_path, 30)

    def close_session(origin: ImportOrigin) -> None:
        if len(target.entries_) >= 3:
            target.session_id = "closed"

    target = FakeTarget(before_read=close_session)
    summary = run(target, plan(tmp_path, workers=1))

    assert summary.imported == 3
    assert summary.failed == 1
    assert "not found" in summary.errors[0].error


def test_an_unexpected_failure_costs_one_file_and_never_hangs_the_run(tmp_path: Path) -> None:
    fill(tmp_path, 10)

    def bug(origin: ImportOrigin) -> None:
        if origin.path == "d1/f4.png":
            raise RuntimeError("a bug")

    target = FakeTarget(before_read=bug)
    summary = run(target, plan(tmp_path, workers=1))

    assert [(e.path, e.error) for e in summary.errors] == [
        ("d1/f4.png", "unexpected error: RuntimeError('a bug')")
    ]
    assert summary.imported == 9


def test_bytes_corrupted_in_transit_are_refused_by_the_client_sha256_and_nothing_stored(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.png").write_bytes(b"the bytes")
    (tmp_path / "b.png").write_bytes(b"a second file")

    def flip_in_a(chunk: bytes) -> bytes:
        return chunk.replace(b"the", b"THE")

    target = FakeTarget(in_transit=flip_in_a)
    summary = run(target, plan(tmp_path))

    sent = hashlib.sha256(b"the bytes").hexdigest()
    received = hashlib.sha256(b"THE bytes").hexdigest()
    assert [(e.path, e.error) for e in summary.errors] == [
        ("a.png", f"the upload's sha256 is {received}, the client said {sent}; nothing stored")
    ]
    assert (summary.imported, summary.failed) == (1, 1)
    assert sorted(target.by_path()) == ["b.png"]
    assert list(target.stored.values()) == [b"a second file"]


def test_a_rewrite_between_hashing_and_upload_that_keeps_size_and_mtime_stores_nothing(
    tmp_path: Path,
) -> None:
    """The stat cannot see it; the sha256 the upload carries can."""
    path = tmp_path / "a.png"
    path.write_bytes(b"version 1")
    st = path.stat()

    def rewrite_keeping_the_stat(origin: ImportOrigin) -> None:
        path.write_bytes(b"version 2")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    target = FakeTarget(before_read=rewrite_keeping_the_stat)
    summary = run(target, plan(tmp_path))

    assert summary.failed == 1
    assert "nothing stored" in summary.errors[0].error
    assert target.entries_ == []
