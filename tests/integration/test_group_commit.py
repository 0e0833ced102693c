"""Group commit: concurrent uploads share write transactions and folder syncs, and each
still gets its own answer (on the embedded store: SQLite and a local directory)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from ephemera import Artifact, NotFound, Settings, StorageError, Store, TooLarge, fsutil
from ephemera.blobs.local import LocalBlobWriter
from ephemera.catalog.groupcommit import GroupCommit, group_commit
from ephemera.store import Upload
from ephemera.testing import ManualClock
from tests.conftest import MakeSettings

UPLOADS = 32
BODY = 4096


def _committer(store: Store) -> GroupCommit:
    return group_commit(store.catalog._db)


def _in_threads(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Each call in its own thread, all released at once; each one's result or error."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@contextmanager
def held_lead(committer: GroupCommit) -> Iterator[Callable[[int], None]]:
    """Hold the committer's lead in an open transaction until the block's caller has
    ``wait_for(n)`` callers queued: those then commit as one group when the block ends."""
    release = threading.Event()
    entered = threading.Event()

    def block(_conn: Connection) -> None:
        entered.set()
        release.wait(30)

    holder = threading.Thread(target=lambda: committer.run(block))
    holder.start()
    assert entered.wait(30)

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 30
        while committer.queued < n:
            assert time.monotonic() < deadline, f"{committer.queued} of {n} callers queued"
            time.sleep(0.001)

    try:
        yield wait_for
    finally:
        release.set()
        holder.join(30)


def test_concurrent_uploads_share_transactions_and_folder_syncs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sid in ("a", "b"):
        store.create_session(sid)
    commits: list[int] = []
    folder_syncs: list[Path] = []
    real_sync = fsutil._fsync_dir

    def counted_sync(path: Path) -> None:
        folder_syncs.append(path)
        real_sync(path)

    monkeypatch.setattr(fsutil, "_fsync_dir", counted_sync)
    event.listen(store.catalog.engine, "commit", lambda _conn: commits.append(1))
    bodies = [os.urandom(BODY) for _ in range(UPLOADS)]
    results = _in_threads(
        [
            partial(store.put_artifact, "ab"[i % 2], bodies[i], name=f"{i}.bin")
            for i in range(UPLOADS)
        ]
    )

    # Alone, each upload takes two write transactions (pending, then ready) and one sync
    # of its session's folder.
    assert len(commits) <= UPLOADS, len(commits)
    assert len(folder_syncs) <= UPLOADS // 2, len(folder_syncs)
    for i, artifact in enumerate(results):
        assert artifact.size == BODY
        assert artifact.sha256 == hashlib.sha256(bodies[i]).hexdigest()
        assert store.read_artifact(artifact.session_id, artifact.id) == bodies[i]


def test_a_failing_member_fails_alone(make_settings: MakeSettings) -> None:
    with Store.open(make_settings(session_quota_bytes=1000)) as store:
        for sid in ("ok", "closed", "full"):
            store.create_session(sid)
        store.put_artifact("full", b"x" * 900, name="big.bin")
        uploads: list[Upload] = []
        for sid, name in [("ok", "1"), ("closed", "2"), ("full", "3"), ("ok", "4"), ("ok", "5")]:
            upload = store.begin_upload(sid, name=f"{name}.bin")
            upload.write(b"y" * 200)
            uploads.append(upload)
        store.close_session("closed")
        # The last one fails after its record was made ready: its staged bytes vanished, so
        # moving them into place fails.
        writer = uploads[-1]._writer
        assert isinstance(writer, LocalBlobWriter)
        writer._staging.unlink()
        committer = _committer(store)
        before = committer.stats.transactions
        with held_lead(committer) as wait_for:
            threads_results: list[Any] = []
            committing = threading.Thread(
                target=lambda: threads_results.extend(_in_threads([u.commit for u in uploads]))
            )
            committing.start()
            wait_for(len(uploads))
        committing.join(30)

        # The holder's transaction, then all five in one.
        assert committer.stats.transactions - before == 2
        ok1, closed, full, ok4, vanished = threads_results
        assert isinstance(closed, NotFound)
        assert isinstance(full, TooLarge)
        assert isinstance(vanished, StorageError)
        assert [a.name for a in store.list_artifacts("ok").items] == ["1.bin", "4.bin"]
        assert ok1.name == "1.bin"
        assert ok4.name == "4.bin"
        assert [a.name for a in store.list_artifacts("full").items] == ["big.bin"]
        # The failed members left no record and no bytes; their events are gone with them.
        assert store.catalog.table_row_counts()["artifacts"] == 3
        keys = sorted(b.key for b in store.blobs.list("sessions/"))
        big = store.list_artifacts("full").items[0]
        assert keys == sorted(f"sessions/{a.session_id}/{a.id}" for a in (ok1, ok4, big))
        assert list(store.blobs.list_staged()) == []
        with store.catalog.engine.connect() as conn:
            created = conn.execute(
                text("select session_id from events where type = 'artifact.created'")
            ).all()
        assert sorted(r[0] for r in created) == ["full", "ok", "ok"]


def test_a_failing_whole_body_upload_fails_alone(make_settings: MakeSettings) -> None:
    """Bodies at hand (``put_artifact`` with bytes) are admitted and inserted as one batch."""
    with Store.open(make_settings(session_quota_bytes=1000)) as store:
        for sid in ("ok", "gone", "full"):
            store.create_session(sid)
        store.put_artifact("full", b"x" * 900, name="big.bin")
        store.close_session("gone")
        committer = _committer(store)
        before = committer.stats.transactions
        puts = [
            partial(store.put_artifact, sid, b"y" * 200, name=f"{i}.bin")
            for i, sid in enumerate(["ok", "gone", "full", "ok"])
        ]
        with held_lead(committer) as wait_for:
            results: list[Any] = []
            putting = threading.Thread(target=lambda: results.extend(_in_threads(puts)))
            putting.start()
            wait_for(len(puts))
        putting.join(30)

        assert committer.stats.transactions - before == 2
        ok0, gone, full, ok3 = results
        assert isinstance(gone, NotFound)
        assert isinstance(full, TooLarge)
        assert sorted(a.name for a in store.list_artifacts("ok").items) == ["0.bin", "3.bin"]
        assert [ok0.name, ok3.name] == ["0.bin", "3.bin"]
        assert store.catalog.table_row_counts()["artifacts"] == 3
        assert len(list(store.blobs.list("sessions/"))) == 3
        assert list(store.blobs.list_staged()) == []


def test_uploads_racing_a_close_land_before_it_or_are_refused(store: Store) -> None:
    store.create_session("s1")
    calls: list[Callable[[], Any]] = [
        partial(store.put_artifact, "s1", b"z" * BODY, name=f"{i}.bin") for i in range(16)
    ]
    calls.insert(8, lambda: store.close_session("s1"))
    results = _in_threads(calls)

    report = results.pop(8)
    landed = [r for r in results if isinstance(r, Artifact)]
    refused = [r for r in results if isinstance(r, NotFound)]
    assert len(landed) + len(refused) == len(results), results
    # What landed, landed before the close: the close counted and removed it.
    assert report.artifact_count == len(landed)
    assert report.deleted_bytes == BODY * len(landed)
    assert store.catalog.table_row_counts()["artifacts"] == 0
    assert list(store.blobs.list("sessions/")) == []
    assert list(store.blobs.list_staged()) == []


_CHILD = """
import os, signal, sys, threading, time
from ephemera import Settings, Store
from ephemera.blobs.local import LocalBlobWriter
from ephemera.catalog.groupcommit import group_commit

data_dir, members, whole = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "whole"
store = Store.open(Settings(data_dir=data_dir))
store.create_session("s")
store.put_artifact("s", b"before", name="before.bin")
committer = group_commit(store.catalog._db)
commits = []
for i in range(members):
    if whole:  # bodies at hand: one batch, no pending record
        commits.append(lambda i=i: store.put_artifact("s", bytes([i]) * 4096, name=f"{i}.bin"))
    else:
        upload = store.begin_upload("s", name=f"{i}.bin")
        upload.write(bytes([i]) * 4096)
        commits.append(upload.commit)
release = threading.Event()
holder = threading.Thread(target=committer.run, args=(lambda conn: release.wait(),))
holder.start()
while committer.queued: time.sleep(0.001)
for commit in commits:
    threading.Thread(target=commit, daemon=True).start()
while committer.queued < members: time.sleep(0.001)
def die(conn, items=None):
    # Every other member of this group has run: its record is ready, its bytes renamed.
    print("dying", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
if whole:  # batches run in the order they joined: this one after the uploads'
    threading.Thread(target=committer.run_batched, args=(die, None), daemon=True).start()
else:
    threading.Thread(target=committer.run, args=(die,), daemon=True).start()
while committer.queued < members + 1: time.sleep(0.001)
release.set()
time.sleep(30)
"""


@pytest.mark.slow
@pytest.mark.parametrize("bodies", ["streamed", "whole"])
def test_a_crash_inside_a_group_leaves_nothing_of_it_visible(tmp_path: Path, bodies: str) -> None:
    data_dir = tmp_path / "data"
    members = 8
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(data_dir), str(members), bodies],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "dying" in child.stdout

    with Store.open(Settings(data_dir=data_dir, orphan_grace_s=0)) as store:
        # The group's renames happened, its commit did not: only the artifact from before.
        assert [a.name for a in store.list_artifacts("s").items] == ["before.bin"]
        on_disk = [b.key for b in store.blobs.list("sessions/s/")]
        assert len(on_disk) == members + 1
        store.cleanup("orphaned")
        (kept,) = store.list_artifacts("s").items
        assert [b.key for b in store.blobs.list("sessions/")] == [f"sessions/s/{kept.id}"]
        assert store.catalog.table_row_counts()["artifacts"] == 1
        assert store.read_artifact("s", kept.id) == b"before"


def _innermost(thread: threading.Thread) -> tuple[str, str] | None:
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None:
        return None
    return Path(frame.f_code.co_filename).name, frame.f_code.co_name


def test_a_grouped_upload_is_admitted_only_while_its_session_is_live(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole-body uploads whose sessions were live when they started, and changed while they
    waited to join a group: each member is admitted by what its session is in the group's
    transaction, at the group's instant."""
    store.create_session("live", idle_timeout_s=None)
    store.create_session("idle", idle_timeout_s=60)
    for sid in ("closing", "closed"):
        store.create_session(sid, idle_timeout_s=None)
    clock.advance(120)  # "idle" is past its deadline, not yet closed by any cleanup
    committer = _committer(store)
    joining, gate = threading.Semaphore(0), threading.Event()
    join = committer.run_batched

    def gated(batch: Any, item: Any) -> Any:
        joining.release()
        assert gate.wait(30)
        return join(batch, item)

    monkeypatch.setattr(committer, "run_batched", gated)
    sids = ["live", "idle", "closing", "closed"]
    results: list[Any] = []
    putting = threading.Thread(
        target=lambda: results.extend(
            _in_threads(
                [partial(store.put_artifact, sid, b"w" * BODY, name=f"{sid}.bin") for sid in sids]
            )
        )
    )
    putting.start()
    for _ in sids:
        assert joining.acquire(timeout=30)
    # Staged and synced, about to join a group: now the sessions change.
    assert store.catalog.begin_close("closing", clock.now()) is not None
    store.close_session("closed")
    before = committer.stats.transactions
    with held_lead(committer) as wait_for:
        gate.set()
        wait_for(len(sids))
    putting.join(30)

    assert committer.stats.transactions - before == 2  # the holder's, then all four in one
    live, idle, closing, closed = results
    assert isinstance(live, Artifact), live
    for refused in (idle, closing, closed):
        assert isinstance(refused, NotFound), refused
    assert store.catalog.table_row_counts()["artifacts"] == 1
    assert [b.key for b in store.blobs.list("sessions/")] == [f"sessions/live/{live.id}"]
    assert list(store.blobs.list_staged()) == []


def test_a_close_waits_for_a_group_in_flight_and_removes_what_it_committed(
    store: Store,
) -> None:
    """A close that comes while a group's transaction is open (its members admitted, their
    bytes renamed into place, their records inserted) touches nothing until the group has
    committed, then counts and removes every member."""
    store.create_session("s")
    members = 8
    committer = _committer(store)
    in_flight, go = threading.Event(), threading.Event()

    def hold(_conn: Connection, items: list[Any]) -> list[Any]:
        in_flight.set()  # batches run in the order they joined: the uploads' have run
        assert go.wait(30)
        return [None] * len(items)

    results: list[Any] = []
    puts = [partial(store.put_artifact, "s", b"q" * BODY, name=f"{i}.bin") for i in range(members)]
    putting = threading.Thread(target=lambda: results.extend(_in_threads(puts)))
    holding = threading.Thread(target=committer.run_batched, args=(hold, None))
    with held_lead(committer) as wait_for:
        putting.start()
        wait_for(members)
        holding.start()
        wait_for(members + 1)
    assert in_flight.wait(30)

    closed: list[Any] = []
    closing = threading.Thread(target=lambda: closed.append(store.close_session("s")))
    closing.start()
    deadline = time.monotonic() + 30
    while closing.is_alive() and _innermost(closing) != ("db.py", "write"):
        assert time.monotonic() < deadline, f"the close is at {_innermost(closing)}"
        time.sleep(0.001)
    # The close waits for its write turn, having touched nothing of the group in flight.
    assert closing.is_alive(), f"the close did not wait for the group: {closed}"
    assert len(list(store.blobs.list("sessions/s/"))) == members
    go.set()
    for thread in (putting, holding, closing):
        thread.join(30)

    assert len(results) == members
    assert all(isinstance(r, Artifact) for r in results), results
    (report,) = closed
    assert report.artifact_count == members
    assert report.deleted_bytes == members * BODY
    assert store.catalog.table_row_counts()["artifacts"] == 0
    assert list(store.blobs.list("sessions/")) == []
    assert list(store.blobs.list_staged()) == []
