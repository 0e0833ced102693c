"""The importer on the real store: each file version exactly once, on every backend."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from ephemera import Store
from ephemera.importer import Importer, Plan, StoreTarget, Summary
from ephemera.models import FollowUp, ImportOrigin
from tests.conftest import WITH_SAMPLES, MakeSettings

CONTRACT = True
SOURCE = "camera-pc:/photos"


@pytest.fixture
def store(make_settings: MakeSettings) -> Iterator[Store]:
    with Store.open(make_settings(processors=WITH_SAMPLES)) as opened:
        yield opened


@pytest.fixture
def session_id(store: Store) -> str:
    return store.create_session(label="import").session.id


def fill(root: Path, count: int, size: int = 2000) -> dict[str, bytes]:
    files = {f"batch{i % 4}/img{i:03}.png": os.urandom(size + i) for i in range(count)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def run(store: Store, root: Path, session_id: str, **changes: Any) -> Summary:
    plan = Plan(root=root, session_id=session_id, source=SOURCE, **changes)
    return Importer(StoreTarget(store), plan).run()


def stored(store: Store, session_id: str) -> dict[str, list[bytes]]:
    """The bytes of every artifact of the session, by the path its ledger entry names."""
    by_path: dict[str, list[bytes]] = {}
    page = store.list_imports(session_id, source=SOURCE)
    for entry in page.items:
        data = store.read_artifact(session_id, entry.artifact_id)
        by_path.setdefault(entry.origin.path, []).append(data)
    return by_path


def test_each_file_is_imported_exactly_once_and_a_rerun_skips_it(
    store: Store, session_id: str, tmp_path: Path
) -> None:
    files = fill(tmp_path / "photos", 24)

    first = run(store, tmp_path / "photos", session_id)
    second = run(store, tmp_path / "photos", session_id)

    assert (first.imported, first.skipped, first.failed) == (24, 0, 0)
    assert (second.imported, second.skipped, second.failed) == (0, 24, 0)
    assert stored(store, session_id) == {rel: [data] for rel, data in files.items()}
    artifacts = store.list_artifacts(session_id, limit=1000).items
    assert len(artifacts) == 24
    by_name = {a.name: a for a in artifacts}
    for rel, data in files.items():
        assert by_name[Path(rel).name].sha256 == hashlib.sha256(data).hexdigest()


def test_a_changed_file_becomes_a_new_artifact_replacing_the_old(
    store: Store, session_id: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    fill(root, 3)
    run(store, root, session_id)
    (root / "batch1/img001.png").write_bytes(b"retaken")

    summary = run(store, root, session_id)

    assert (summary.imported, summary.skipped) == (1, 2)
    old, new = [
        e for e in store.list_imports(session_id).items if e.origin.path == "batch1/img001.png"
    ]
    assert new.replaces == old.artifact_id
    assert store.read_artifact(session_id, new.artifact_id) == b"retaken"
    assert len(store.list_artifacts(session_id).items) == 4


def test_then_follow_ups_missed_by_a_crash_are_submitted_once_on_restart(
    store: Store, session_id: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    files = fill(root, 5)
    then = FollowUp("sample-upper", {"suffix": ".up"})
    # What a crash between the commit and the task submission leaves: entries, no tasks.
    for rel in list(files)[:3]:
        st = (root / rel).stat()
        origin = ImportOrigin(SOURCE, rel, st.st_size, st.st_mtime_ns)
        store.import_file(session_id, (root / rel).read_bytes(), origin=origin, name="x.png")

    summary = run(store, root, session_id, then=then)
    again = run(store, root, session_id, then=then)

    entries = store.list_imports(session_id).items
    tasks = store.list_tasks(session_id, limit=100).items
    assert len(entries) == 5
    assert len(tasks) == 5
    assert sorted(summary.tasks) == sorted(t.id for t in tasks)
    assert again.tasks == []
    assert {e.task_id for e in entries} == {t.id for t in tasks}
    for task in tasks:
        assert task.processor == "sample-upper"
        assert task.params == {"suffix": ".up"}
        [only] = task.inputs
        assert only.artifact_id in {e.artifact_id for e in entries}


class ConnectionUse:
    """Who holds each pooled database connection, checked on every statement."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: dict[int, int] = {}
        self.violations: list[str] = []
        self.busy = 0
        self.most_busy = 0
        self.threads: set[int] = set()
        self.overlapped = threading.Event()
        self.waited = False

    def checkout(self, dbapi: Any, record: Any, proxy: Any) -> None:
        me = threading.get_ident()
        with self.lock:
            if id(dbapi) in self.owner:
                self.violations.append(f"checked out twice: by {self.owner[id(dbapi)]}, {me}")
            self.owner[id(dbapi)] = me
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
            if self.busy >= 2:
                self.overlapped.set()
            wait = not self.waited and threading.current_thread().name.startswith("import-")
            self.waited = self.waited or wait
        if wait:
            # Hold the first connection an upload thread takes until another thread takes
            # one too: two connections in use at once, whatever the scheduler does.
            self.overlapped.wait(5)

    def checkin(self, dbapi: Any, record: Any) -> None:
        with self.lock:
            if self.owner.pop(id(dbapi), None) is not None:
                self.busy -= 1

    def execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        me = threading.get_ident()
        dbapi = conn.connection.dbapi_connection
        with self.lock:
            self.threads.add(me)
            holder = self.owner.get(id(dbapi))
            if holder != me:
                self.violations.append(f"{statement[:60]!r} on a connection held by {holder}")


def test_no_database_connection_is_used_by_two_threads_at_once(
    store: Store, session_id: str, tmp_path: Path
) -> None:
    """The upload threads share one Store: each statement runs on a connection its own
    thread checked out of the pool, never on one another thread holds."""
    fill(tmp_path / "photos", 40, size=50_000)
    use = ConnectionUse()
    engine = store.catalog.engine
    event.listen(engine, "checkout", use.checkout)
    event.listen(engine, "checkin", use.checkin)
    event.listen(engine, "before_cursor_execute", use.execute)
    try:
        summary = run(store, tmp_path / "photos", session_id, workers=6)
    finally:
        event.remove(engine, "checkout", use.checkout)
        event.remove(engine, "checkin", use.checkin)
        event.remove(engine, "before_cursor_execute", use.execute)

    assert use.violations == []
    assert summary.imported == 40
    # The test means something only if the threads really overlapped.
    assert len(use.threads) >= 3
    assert use.overlapped.is_set()
