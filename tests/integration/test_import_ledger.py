"""The import ledger through the library: each file version imported into a session once,
committed with its artifact, on every database and blob store."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event

from ephemera import ChecksumMismatch, InvalidInput, NotFound, Settings, Store
from ephemera.blobs import BlobWriter
from ephemera.models import FollowUp, ImportOrigin, TaskState
from ephemera.testing import ManualClock
from ephemera.worker import Worker
from tests.conftest import WITH_SAMPLES, MakeSettings, snapshot
from tests.waiting import wait_for

CONTRACT = True

SOURCE = "host:/srv/scans"
UPPER = FollowUp("sample-upper", {"suffix": ".up"})


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(processors=WITH_SAMPLES, idle_timeout_s=3600)


def origin(path: str = "a/scan.txt", size: int = 5, mtime_ns: int = 1_000) -> ImportOrigin:
    return ImportOrigin(SOURCE, path, size, mtime_ns)


class NeverRead:
    """Data that fails the test if anything reads it."""

    def __iter__(self) -> Iterator[bytes]:
        raise AssertionError("the data of an origin already imported was read")


def never_read() -> NeverRead:
    return NeverRead()


@contextmanager
def count_transactions() -> Iterator[Counter[str]]:
    """Read and write transactions begun, by any engine, inside the block."""
    seen: Counter[str] = Counter()

    def begun(conn: Connection) -> None:
        seen["write" if conn.get_execution_options().get("ephemera_write") else "read"] += 1

    event.listen(Engine, "begin", begun)
    try:
        yield seen
    finally:
        event.remove(Engine, "begin", begun)


def stored_keys(store: Store) -> list[str]:
    return sorted(b.key for b in store.blobs.list("sessions/"))


def artifact_rows(store: Store) -> int:
    return store.catalog.table_row_counts()["artifacts"]


def ledger(store: Store, session_id: str, **kwargs: Any) -> list[Any]:
    return store.list_imports(session_id, **kwargs).items


# -- exactly once ------------------------------------------------------------------------------


def test_an_origin_is_imported_once_and_the_second_time_its_data_is_not_read(
    store: Store,
) -> None:
    store.create_session("s1")
    first = store.import_file("s1", b"hello", origin=origin(), name="scan.txt")
    assert first.created
    entry = first.entry
    assert (entry.session_id, entry.origin, entry.replaces, entry.task_id) == (
        "s1",
        origin(),
        None,
        None,
    )
    artifact = store.get_artifact("s1", entry.artifact_id)
    assert entry.sha256 == artifact.sha256
    assert store.read_artifact("s1", entry.artifact_id) == b"hello"

    again = store.import_file("s1", never_read(), origin=origin(), name="scan.txt")
    assert not again.created
    assert again.entry == entry
    assert len(store.list_artifacts("s1").items) == 1
    assert store.find_import("s1", origin()) == entry
    assert store.find_import("s1", origin(mtime_ns=2_000)) is None


def test_a_changed_file_becomes_a_new_artifact_that_replaces_the_previous_version(
    store: Store,
) -> None:
    store.create_session("s1")
    v1 = store.import_file("s1", b"one", origin=origin(size=3), name="scan.txt").entry
    v2 = store.import_file("s1", b"two!", origin=origin(size=4), name="scan.txt").entry
    v3 = store.import_file(
        "s1", b"two!", origin=origin(size=4, mtime_ns=9_000), name="scan.txt"
    ).entry
    other = store.import_file("s1", b"b", origin=origin("b.txt", 1), name="b.txt").entry
    assert len({v1.artifact_id, v2.artifact_id, v3.artifact_id}) == 3
    assert (v1.replaces, v2.replaces, v3.replaces) == (None, v1.artifact_id, v2.artifact_id)
    assert other.replaces is None
    assert ledger(store, "s1") == [v1, v2, v3, other]


def test_the_ledger_lists_by_source_in_import_order_a_page_at_a_time(store: Store) -> None:
    store.create_session("s1")
    mine = [
        store.import_file("s1", b"x", origin=origin(f"f{i}.txt", 1), name="f.txt").entry
        for i in range(5)
    ]
    theirs = ImportOrigin("host:/elsewhere", "f0.txt", 1, 1_000)
    other = store.import_file("s1", b"y", origin=theirs, name="f.txt").entry

    seen, cursor = [], None
    while True:
        listed = store.list_imports("s1", source=SOURCE, cursor=cursor, limit=2)
        assert len(listed.items) <= 2
        seen += listed.items
        cursor = listed.next_cursor
        if cursor is None:
            break
    assert seen == mine
    assert ledger(store, "s1", source="host:/elsewhere") == [other]
    assert ledger(store, "s1") == [*mine, other]
    assert ledger(store, "s1", source="host:/nothing") == []
    with pytest.raises(InvalidInput, match="cursor"):
        store.list_imports("s1", cursor="not-a-cursor")


def test_two_imports_of_one_origin_at_once_leave_one_artifact_and_one_entry(
    store: Store,
) -> None:
    store.create_session("s1")
    # Both have looked in the ledger and started streaming before either commits.
    both_streaming = threading.Barrier(2, timeout=30)

    def data() -> Iterator[bytes]:
        yield b"hel"
        both_streaming.wait()
        yield b"lo"

    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(store.import_file("s1", data(), origin=origin(), name="scan.txt"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(r.created for r in results) == [False, True]
    assert results[0].entry == results[1].entry
    (artifact,) = store.list_artifacts("s1").items
    assert artifact.id == results[0].entry.artifact_id
    assert ledger(store, "s1") == [results[0].entry]
    assert artifact_rows(store) == 1  # the loser's pending record is gone
    assert stored_keys(store) == [f"sessions/s1/{artifact.id}"]
    assert list(store.blobs.list_staged()) == []


class CrashAtCommit:
    """A blob writer that puts the bytes in place and then fails, as a crash inside the
    commit transaction would: after the bytes, before the database commit."""

    def __init__(self, inner: BlobWriter) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def commit(self) -> None:
        self._inner.commit()
        raise RuntimeError("crash inside the commit")


def test_a_crash_inside_the_commit_leaves_neither_artifact_nor_entry(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_session("s1")
    before = snapshot(store)
    writer = store.blobs.writer
    monkeypatch.setattr(store.blobs, "writer", lambda key: CrashAtCommit(writer(key)))
    with pytest.raises(RuntimeError, match="crash inside the commit"):
        store.import_file("s1", b"hello", origin=origin(), name="scan.txt")
    assert snapshot(store) == before
    assert store.find_import("s1", origin()) is None

    monkeypatch.undo()
    assert store.import_file("s1", b"hello", origin=origin(), name="scan.txt").created


def test_a_checksum_mismatch_stores_nothing(store: Store) -> None:
    store.create_session("s1")
    before = snapshot(store)
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        store.import_file("s1", b"hello", origin=origin(), name="scan.txt", sha256="0" * 64)
    assert snapshot(store) == before
    assert ledger(store, "s1") == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (ImportOrigin("", "a.txt", 1, 1), "source must be 1 to 1024"),
        (ImportOrigin("s" * 1025, "a.txt", 1, 1), "source must be 1 to 1024"),
        (ImportOrigin("host:/a\nb", "a.txt", 1, 1), "source must not contain control"),
        (ImportOrigin(SOURCE, "", 1, 1), "path must be 1 to 4096"),
        (ImportOrigin(SOURCE, "a/" * 2048 + "b", 1, 1), "path must be 1 to 4096"),
        (ImportOrigin(SOURCE, "/etc/passwd", 1, 1), "relative"),
        (ImportOrigin(SOURCE, "a/../../etc/passwd", 1, 1), "segment"),
        (ImportOrigin(SOURCE, "./a.txt", 1, 1), "segment"),
        (ImportOrigin(SOURCE, "a//b.txt", 1, 1), "segment"),
        (ImportOrigin(SOURCE, "a/", 1, 1), "segment"),
        (ImportOrigin(SOURCE, "a\\b.txt", 1, 1), "separator"),
        (ImportOrigin(SOURCE, "a\x00.txt", 1, 1), "path must not contain control"),
        (ImportOrigin(SOURCE, "a\x9b.txt", 1, 1), "path must not contain control"),
        (ImportOrigin(SOURCE, "a.txt", -1, 1), "size"),
        (ImportOrigin(SOURCE, "a.txt", True, 1), "size"),
        (ImportOrigin(SOURCE, "a.txt", 1, -1), "mtime_ns"),
        (ImportOrigin(SOURCE, "a.txt", 1, 2**63), "mtime_ns"),
    ],
)
def test_a_hostile_origin_is_refused_with_a_clear_message_and_nothing_stored(
    store: Store, bad: ImportOrigin, message: str
) -> None:
    store.create_session("s1")
    before = snapshot(store)
    with pytest.raises(InvalidInput, match=message):
        store.import_file("s1", never_read(), origin=bad, name="a.txt")
    assert snapshot(store) == before


def test_a_bad_follow_up_is_refused_before_the_first_byte(store: Store) -> None:
    store.create_session("s1")
    before = snapshot(store)
    for then, message in [
        (FollowUp("no-such-processor"), "not enabled"),
        (FollowUp("sample-upper", {"suffix": 5}), "suffix"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            store.import_file("s1", never_read(), origin=origin(), name="a.txt", then=then)
    assert snapshot(store) == before


# -- the ledger lives and dies with its session ------------------------------------------------


def test_closing_a_session_drops_its_ledger_and_the_same_id_starts_empty(store: Store) -> None:
    store.create_session("s1")
    store.create_session("s2")
    store.import_file("s1", b"hello", origin=origin(), name="scan.txt")
    kept = store.import_file("s2", b"hello", origin=origin(), name="scan.txt").entry
    store.close_session("s1")
    assert store.catalog.table_row_counts()["import_ledger"] == 1

    store.create_session("s1")
    assert ledger(store, "s1") == []
    again = store.import_file("s1", b"hello", origin=origin(), name="scan.txt")
    assert again.created
    assert ledger(store, "s2") == [kept]


def test_idle_cleanup_drops_the_ledger_of_the_sessions_it_removes(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("s1", idle_timeout_s=60)
    store.import_file("s1", b"hello", origin=origin(), name="scan.txt")
    clock.advance(120)
    assert store.cleanup("idle-sessions").deleted_count == 1
    assert store.catalog.table_row_counts()["import_ledger"] == 0
    with pytest.raises(NotFound):
        store.find_import("s1", origin())
    store.create_session("s1")
    assert store.import_file("s1", b"hello", origin=origin(), name="scan.txt").created


def test_an_expired_session_is_not_found_even_for_an_origin_its_ledger_still_holds(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("s1", idle_timeout_s=60)
    store.import_file("s1", b"hello", origin=origin(), name="scan.txt")
    clock.advance(120)  # expired, not yet cleaned up: the ledger row is still there
    with pytest.raises(NotFound, match="s1"):
        store.import_file("s1", never_read(), origin=origin(), name="scan.txt")
    with pytest.raises(NotFound, match="nobody"):
        store.import_file("nobody", never_read(), origin=origin(), name="scan.txt")
    assert store.catalog.table_row_counts()["artifacts"] == 1


def test_an_import_costs_the_write_transactions_of_an_upload_and_a_known_origin_one_read(
    store: Store,
) -> None:
    """On SQLite writes queue one at a time: each extra write transaction costs throughput."""
    store.create_session("s1")
    with count_transactions() as put:  # streamed: bytes at hand take one write, not two
        store.put_artifact("s1", iter([b"hello"]), name="scan.txt")
    with count_transactions() as new:
        store.import_file("s1", b"hello", origin=origin(), name="scan.txt")
    with count_transactions() as known:
        store.import_file("s1", never_read(), origin=origin(), name="scan.txt")
    assert put == {"write": 2}
    assert new == {"read": 1, "write": 2}
    assert known == {"read": 1}


def test_deleting_the_imported_artifact_keeps_the_entry_so_the_file_is_not_imported_again(
    store: Store,
) -> None:
    store.create_session("s1")
    entry = store.import_file("s1", b"hello", origin=origin(), name="scan.txt").entry
    store.delete_artifact("s1", entry.artifact_id)
    again = store.import_file("s1", never_read(), origin=origin(), name="scan.txt")
    assert (again.created, again.entry) == (False, entry)
    assert store.list_artifacts("s1").items == []


# -- follow-up tasks ---------------------------------------------------------------------------


def test_then_submits_one_task_with_the_artifact_as_its_only_input_and_records_it(
    store: Store,
) -> None:
    store.create_session("s1")
    imported = store.import_file("s1", b"hello", origin=origin(), name="scan.txt", then=UPPER)
    task_id = imported.entry.task_id
    assert task_id is not None
    task = store.get_task("s1", task_id)
    assert (task.processor, task.params) == ("sample-upper", {"suffix": ".up"})
    assert [i.artifact_id for i in task.inputs] == [imported.entry.artifact_id]
    assert store.find_import("s1", origin()) == imported.entry

    again = store.import_file("s1", never_read(), origin=origin(), name="scan.txt", then=UPPER)
    assert again.entry.task_id == task_id
    assert len(store.list_tasks("s1").items) == 1


def test_a_follow_up_refused_at_submission_raises_but_the_import_stays_without_a_task(
    store: Store,
) -> None:
    store.create_session("s1")
    # Valid params, but the input itself is checked only at submission: one image of three.
    calibrate = FollowUp("camera-calibration", {"board": {"columns": 8, "rows": 5}})
    with pytest.raises(InvalidInput, match="at least 3 needed"):
        store.import_file("s1", b"hello", origin=origin(), name="scan.txt", then=calibrate)
    (entry,) = ledger(store, "s1")
    assert entry.task_id is None
    assert store.read_artifact("s1", entry.artifact_id) == b"hello"
    assert store.list_tasks("s1").items == []


def test_follow_up_after_a_crash_submits_exactly_one_task(store: Store) -> None:
    store.create_session("s1")
    # The importer died after the commit, before submitting: an entry without a task.
    entry = store.import_file("s1", b"hello", origin=origin(), name="scan.txt").entry
    followed = store.follow_up_import("s1", entry.artifact_id, UPPER)
    assert followed.task_id is not None
    assert store.follow_up_import("s1", entry.artifact_id, UPPER) == followed
    (task,) = store.list_tasks("s1").items
    assert task.id == followed.task_id
    assert [i.artifact_id for i in task.inputs] == [entry.artifact_id]
    with pytest.raises(NotFound, match="no import"):
        store.follow_up_import("s1", "0" * 8 + "-0000-7000-8000-" + "0" * 12, UPPER)


def test_racing_follow_ups_with_a_worker_running_ever_make_exactly_one_task(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_session("s1")
    entry = store.import_file("s1", b"hello", origin=origin(), name="scan.txt").entry
    racers = 3
    # Every caller has seen the entry without a task before any goes on: the widest race.
    all_looked = threading.Barrier(racers, timeout=30)
    looks = itertools.count()
    look = store.catalog.import_of_artifact

    def look_then_wait(session_id: str, artifact_id: str) -> Any:
        found = look(session_id, artifact_id)
        if next(looks) < racers:
            all_looked.wait()
        return found

    monkeypatch.setattr(store.catalog, "import_of_artifact", look_then_wait)
    results: list[Any] = []
    errors: list[BaseException] = []

    def follow_up() -> None:
        try:
            results.append(store.follow_up_import("s1", entry.artifact_id, UPPER))
        except BaseException as exc:  # reported below
            errors.append(exc)

    # A worker claims whatever is queued at once: a task that ever existed would run.
    pool = Worker(store, concurrency=2, poll_interval_s=0.01)
    pool.start()
    try:
        threads = [threading.Thread(target=follow_up) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        wait_for(
            lambda: all(t.state is TaskState.SUCCEEDED for t in store.list_tasks("s1").items),
            30,
            "the follow-up to succeed",
            interval_s=0.02,
        )
    finally:
        pool.stop(timeout_s=5)
    (task,) = store.list_tasks("s1").items
    assert [r.task_id for r in results] == [task.id] * racers
    assert store.find_import("s1", origin()) == results[0]
    (output,) = task.outputs
    assert store.read_artifact("s1", output.artifact_id) == b"HELLO"
    assert len(store.list_artifacts("s1").items) == 2  # the import and one output


def test_two_versions_of_one_path_committed_at_once_form_a_chain(store: Store) -> None:
    store.create_session("s1")
    errors: list[BaseException] = []

    def run(path: str, body: bytes, both_streamed: threading.Barrier) -> None:
        def data() -> Iterator[bytes]:
            yield body[:1]
            both_streamed.wait()  # both have streamed their bytes before either commits
            yield body[1:]

        try:
            store.import_file("s1", data(), origin=origin(path, len(body)), name="scan.txt")
        except BaseException as exc:  # reported below
            errors.append(exc)

    for attempt in range(5):
        path = f"race-{attempt}.txt"
        barrier = threading.Barrier(2, timeout=30)
        threads = [
            threading.Thread(target=run, args=(path, body, barrier)) for body in (b"one", b"four")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        first, second = [e for e in ledger(store, "s1") if e.origin.path == path]
        assert (first.replaces, second.replaces) == (None, first.artifact_id), attempt
