"""Verification and the scrub in the library: corruption at rest is found, flagged, never read."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from sqlalchemy import event

from ephemera import Settings, Store
from ephemera.blobs import artifact_key, session_prefix
from ephemera.errors import ArtifactCorrupt, InvalidInput, NotFound
from ephemera.hooks import ArtifactDeleted
from ephemera.integrity import VerifyProgress, VerifyRequest, run_verify, verified_chunks
from ephemera.models import Artifact
from ephemera.scrub import LOCK, Scrubber
from ephemera.testing import ManualClock
from tests.conftest import MakeSettings, database_dump, snapshot
from tests.databases import PostgresDatabases


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(
    request: pytest.FixtureRequest,
    data_dir: Path,
    clock: ManualClock,
    postgres_databases: PostgresDatabases,
) -> Iterator[Store]:
    """The catalog's integrity queries run on both databases."""
    url = postgres_databases.fresh() if request.param == "postgresql" else None
    try:
        with Store.open(Settings(data_dir=data_dir, database_url=url), clock=clock) as store:
            yield store
    finally:
        if url is not None:
            postgres_databases.drop(url)


def path_of(store: Store, artifact: Artifact) -> Path:
    path = store.artifact_path(artifact.session_id, artifact.id)
    assert path is not None
    assert path.is_file()
    return path


def flip_a_byte(store: Store, artifact: Artifact, at: int = 0) -> None:
    path = path_of(store, artifact)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def three(store: Store) -> tuple[str, Artifact, Artifact, Artifact]:
    sid = store.create_session(idle_timeout_s=None).session.id
    good = store.put_artifact(sid, b"good bytes" * 100, name="good.bin")
    corrupt = store.put_artifact(sid, b"corrupt me" * 100, name="corrupt.bin")
    missing = store.put_artifact(sid, b"lose me" * 100, name="missing.bin")
    return sid, good, corrupt, missing


def test_verify_names_the_corrupt_and_the_missing_and_flags_only_them(any_store: Store) -> None:
    store = any_store
    sid, good, corrupt, missing = three(store)
    flip_a_byte(store, corrupt, at=500)
    path_of(store, missing).unlink()

    report = store.verify()

    assert not report.ok
    assert (report.checked_count, report.missing_count, report.corrupt_count) == (3, 1, 1)
    found = {(p.artifact_id, p.name, p.integrity.value) for p in report.problems}
    assert found == {(corrupt.id, "corrupt.bin", "corrupt"), (missing.id, "missing.bin", "missing")}
    assert store.get_artifact(sid, corrupt.id).integrity == "corrupt"
    assert "recorded" in (store.get_artifact(sid, corrupt.id).integrity_error or "")
    assert store.get_artifact(sid, missing.id).integrity == "missing"
    assert store.get_artifact(sid, good.id).integrity is None
    assert store.get_artifact(sid, good.id).verified_at == store.clock.now()
    assert store.get_artifact(sid, corrupt.id).verified_at is None


def test_a_truncated_file_is_corrupt_even_before_its_hash_is_compared(store: Store) -> None:
    _sid, good, _, _ = three(store)
    path = path_of(store, good)
    path.write_bytes(path.read_bytes()[:-1])
    report = store.verify()
    assert report.corrupt_count == 1
    assert "999 bytes stored, 1000 recorded" in report.problems[0].error


@pytest.fixture
def task_store(make_settings: MakeSettings, clock: ManualClock) -> Iterator[Store]:
    with Store.open(make_settings(external_processors=["external"]), clock=clock) as store:
        yield store


def test_a_flagged_artifact_is_never_read_nor_taken_as_a_task_input(task_store: Store) -> None:
    store = task_store
    sid, good, corrupt, missing = three(store)
    flip_a_byte(store, corrupt)
    path_of(store, missing).unlink()
    store.verify()

    for artifact in (corrupt, missing):
        with pytest.raises(ArtifactCorrupt, match=f"{artifact.id} failed verification"):
            store.read_artifact(sid, artifact.id)
        with pytest.raises(ArtifactCorrupt):
            store.open_artifact(sid, artifact.id)
        with pytest.raises(ArtifactCorrupt):
            store.open_artifact_range(store.get_artifact(sid, artifact.id), 0, 1)
        with pytest.raises(ArtifactCorrupt, match="corrupt" if artifact is corrupt else "missing"):
            store.submit_task(sid, "external", [good.id, artifact.id], {})
    assert store.read_artifact(sid, good.id) == b"good bytes" * 100
    assert store.list_tasks(sid).items == []


def test_a_running_task_cannot_read_an_input_flagged_after_it_was_queued(
    task_store: Store,
) -> None:
    store = task_store
    sid, good, corrupt, _ = three(store)
    task = store.submit_task(sid, "external", [good.id, corrupt.id], {})
    flip_a_byte(store, corrupt)
    store.verify()
    claim = store.claim_task("w1", ["external"])
    assert claim is not None
    assert claim.task.id == task.id
    with pytest.raises(ArtifactCorrupt):
        store.open_task_input(task.id, claim.claim_id, corrupt.id)
    _, stream = store.open_task_input(task.id, claim.claim_id, good.id)
    with stream:
        assert stream.read() == b"good bytes" * 100


def test_bytes_restored_from_a_backup_lift_the_flag_on_the_next_verify(any_store: Store) -> None:
    store = any_store
    sid, _, corrupt, _ = three(store)
    backup = path_of(store, corrupt).read_bytes()
    flip_a_byte(store, corrupt)
    assert store.verify(session_id=sid).corrupt_count == 1

    path_of(store, corrupt).write_bytes(backup)
    report = store.verify(session_id=sid)

    assert report.ok
    assert report.restored_count == 1
    assert store.get_artifact(sid, corrupt.id).integrity is None
    assert store.read_artifact(sid, corrupt.id) == backup


def test_repair_drop_deletes_flagged_artifacts_through_the_delete_path(any_store: Store) -> None:
    store = any_store
    sid, good, corrupt, missing = three(store)
    flip_a_byte(store, corrupt)
    path_of(store, missing).unlink()
    deleted: list[ArtifactDeleted] = []
    store.hooks.on_artifact_deleted(deleted.append)

    report = store.verify(repair="drop")

    assert (report.corrupt_count, report.missing_count, report.repaired_count) == (1, 1, 2)
    assert all(p.dropped for p in report.problems)
    assert sorted((e.artifact_id, e.reason) for e in deleted) == sorted(
        [(corrupt.id, "verify"), (missing.id, "verify")]
    )
    assert [a.id for a in store.list_artifacts(sid).items] == [good.id]
    assert store.artifact_path(sid, corrupt.id) is not None
    assert not path_of_any(store, corrupt).exists()
    with pytest.raises(NotFound):
        store.get_artifact(sid, corrupt.id)


def path_of_any(store: Store, artifact: Artifact) -> Path:
    path = store.artifact_path(artifact.session_id, artifact.id)
    assert path is not None
    return path


def test_repair_drop_keeps_a_leased_artifact_flagged_and_says_so(store: Store) -> None:
    sid, _, corrupt, _ = three(store)
    store.take_lease(sid, artifact_ids=[corrupt.id], ttl_s=600)
    flip_a_byte(store, corrupt)

    report = store.verify(repair="drop")

    assert (report.corrupt_count, report.repaired_count, report.skipped_protected) == (1, 0, 1)
    assert not report.problems[0].dropped
    assert store.get_artifact(sid, corrupt.id).integrity == "corrupt"
    store.clock.advance(601)  # type: ignore[attr-defined]
    assert store.verify(repair="drop").repaired_count == 1


def test_without_a_repair_option_verify_flags_and_keeps_everything(store: Store) -> None:
    sid, _, corrupt, missing = three(store)
    flip_a_byte(store, corrupt)
    path_of(store, missing).unlink()
    report = store.verify()
    assert report.repaired_count == 0
    assert len(store.list_artifacts(sid).items) == 3


def test_verify_of_one_session_reads_only_that_session(store: Store) -> None:
    sid, _, corrupt, _ = three(store)
    other = store.create_session().session.id
    elsewhere = store.put_artifact(other, b"x" * 10, name="x.bin")
    flip_a_byte(store, elsewhere)

    report = store.verify(session_id=sid)

    assert report.checked_count == 3
    assert report.ok
    assert store.get_artifact(other, elsewhere.id).integrity is None
    assert store.verify(session_id=other).corrupt_count == 1
    assert corrupt.session_id == sid


def test_progress_reports_running_totals_up_to_the_whole(store: Store) -> None:
    three(store)
    seen: list[VerifyProgress] = []
    store.verify(progress=seen.append, rate_mb_s=1000)
    assert seen[-1] == VerifyProgress(3, 2700, 3, 2700)
    assert [p.done_bytes for p in seen] == sorted(p.done_bytes for p in seen)


def unreadable(store: Store, artifact: Artifact) -> None:
    """Bytes the blob store cannot read (not missing): a directory where the file was."""
    path = path_of(store, artifact)
    path.unlink()
    path.mkdir()


def test_unreadable_bytes_are_reported_as_errors_not_flagged(store: Store) -> None:
    sid, good, corrupt, _ = three(store)
    unreadable(store, corrupt)
    report = store.verify()
    assert not report.ok
    assert [e["artifact_id"] for e in report.errors] == [corrupt.id]
    assert (report.corrupt_count, report.missing_count) == (0, 0)
    assert store.get_artifact(sid, corrupt.id).integrity is None
    assert store.get_artifact(sid, good.id).verified_at is not None


def test_a_run_stops_once_the_blob_store_keeps_failing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ephemera.integrity.MAX_READ_ERRORS", 2)
    _, good, corrupt, missing = three(store)
    for artifact in (good, corrupt, missing):
        unreadable(store, artifact)
    report = store.verify()
    assert report.interrupted
    assert len(report.errors) == 2


def test_the_scrub_passes_over_unreadable_bytes_and_finishes(store: Store) -> None:
    sid, _good, corrupt, missing = three(store)
    unreadable(store, corrupt)
    store.clock.advance(10)  # type: ignore[attr-defined]
    due = VerifyRequest(due_before=store.clock.now())
    store.clock.advance(1)  # type: ignore[attr-defined]
    report = run_verify(store.context, due, actor="scrub")
    assert not report.interrupted
    assert report.checked_count == 3
    assert [e["artifact_id"] for e in report.errors] == [corrupt.id]
    assert store.get_artifact(sid, missing.id).verified_at == store.clock.now()


class RecordedWaits(threading.Event):
    """A stop event that records how long the pacer asks to wait, and never waits."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.append(timeout or 0.0)
        return False


def test_the_rate_limit_paces_reading_to_the_rate(store: Store) -> None:
    sid = store.create_session().session.id
    store.put_artifact(sid, b"x" * 3_000_000, name="3mb.bin")
    paced = RecordedWaits()
    run_verify(store.context, VerifyRequest(rate_mb_s=1), stop=paced)
    # Waits never happen here, so each asks for the whole lead: 3 MB at 1 MB/s is 3 s ahead
    # of the clock by the end (less what reading took).
    assert 2.0 < max(paced.asked) <= 3.0
    unpaced = RecordedWaits()
    run_verify(store.context, VerifyRequest(), stop=unpaced)
    assert unpaced.asked == []


def test_every_run_is_audited_with_actor_params_and_totals(store: Store) -> None:
    sid, _, corrupt, _ = three(store)
    flip_a_byte(store, corrupt)
    store.verify(session_id=sid, rate_mb_s=50, actor="ops")
    (entry,) = store.audit_log(action="verify").items
    assert (entry.actor, entry.action, entry.target) == ("ops", "verify", sid)
    assert entry.params == {"session_id": sid, "rate_mb_s": 50, "repair": "flag"}
    assert entry.result["corrupt_count"] == 1
    assert entry.result["checked_count"] == 3


def test_stats_and_metrics_count_flagged_artifacts(store: Store) -> None:
    _, _, corrupt, missing = three(store)
    flip_a_byte(store, corrupt)
    path_of(store, missing).unlink()
    assert store.cleanup_stats()["integrity"]["never_verified"] == 3
    store.verify()

    numbers = store.cleanup_stats()["integrity"]
    assert (numbers["corrupt"], numbers["missing"], numbers["never_verified"]) == (1, 1, 2)
    assert numbers["last_run"]["result"]["missing_count"] == 1
    text = store.metrics.render().decode()
    assert 'ephemera_artifacts_flagged{integrity="corrupt"} 1.0' in text
    assert 'ephemera_artifacts_flagged{integrity="missing"} 1.0' in text
    assert 'ephemera_verify_items_total{outcome="ok"} 1.0' in text
    assert 'ephemera_verify_items_total{outcome="corrupt"} 1.0' in text
    assert "ephemera_verify_bytes_total 2000.0" in text


def test_a_metrics_scrape_counts_flagged_artifacts_from_their_index_alone(store: Store) -> None:
    _, _, corrupt, _ = three(store)
    flip_a_byte(store, corrupt)
    store.verify()
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(store.catalog.engine, "before_cursor_execute", seen)
    try:
        text = store.metrics.render().decode()
    finally:
        event.remove(store.catalog.engine, "before_cursor_execute", seen)

    assert 'ephemera_artifacts_flagged{integrity="corrupt"} 1.0' in text
    integrity = [(s, p) for s, p in statements if "integrity" in s]
    assert integrity
    with store.catalog.engine.connect() as conn:
        for statement, parameters in integrity:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            assert "ix_artifacts_flagged" in " ".join(row[-1] for row in plan), statement


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_mb_s": -1}, "rate"),
        ({"rate_mb_s": 0}, "rate"),
        ({"rate_mb_s": float("nan")}, "rate"),
        ({"rate_mb_s": float("inf")}, "rate"),
        ({"session_id": "../../etc"}, "invalid session ID"),
        ({"session_id": "a" * 65}, "invalid session ID"),
        ({"session_id": "x'; DROP TABLE artifacts; --"}, "invalid session ID"),
        ({"repair": "shred"}, "repair"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    store: Store, kwargs: dict[str, object], message: str
) -> None:
    _, _, corrupt, _ = three(store)
    flip_a_byte(store, corrupt)
    before, rows = snapshot(store), database_dump(store)
    with pytest.raises(InvalidInput, match=message):
        store.verify(**kwargs)  # type: ignore[arg-type]
    assert snapshot(store) == before
    assert database_dump(store) == rows


def test_an_unknown_session_is_not_found_and_changes_nothing(store: Store) -> None:
    three(store)
    rows = database_dump(store)
    with pytest.raises(NotFound):
        store.verify(session_id="no-such-session")
    assert database_dump(store) == rows


def test_reading_verified_holds_back_the_last_chunk_of_wrong_bytes_and_flags_them(
    store: Store,
) -> None:
    sid = store.create_session().session.id
    artifact = store.put_artifact(sid, bytes(range(256)) * 40, name="a.bin")
    flip_a_byte(store, artifact, at=5000)
    chunks: list[bytes] = []
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        chunks.extend(verified_chunks(store.context, artifact, chunk_size=4096))
    assert sum(map(len, chunks)) == 8192  # two of three chunks: never the whole body
    assert store.get_artifact(sid, artifact.id).integrity == "corrupt"
    with pytest.raises(ArtifactCorrupt):
        store.iter_verified(store.get_artifact(sid, artifact.id))


def test_reading_verified_yields_right_bytes_whole(store: Store) -> None:
    sid = store.create_session().session.id
    data = bytes(range(256)) * 40
    artifact = store.put_artifact(sid, data, name="a.bin")
    assert b"".join(verified_chunks(store.context, artifact, chunk_size=4096)) == data
    assert b"".join(store.iter_verified(artifact)) == data
    assert store.get_artifact(sid, artifact.id).integrity is None


def test_read_artifact_checks_the_hash_of_what_it_returns(store: Store) -> None:
    sid = store.create_session().session.id
    artifact = store.put_artifact(sid, b"abc" * 100, name="a.bin")
    flip_a_byte(store, artifact)
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.read_artifact(sid, artifact.id)
    assert store.get_artifact(sid, artifact.id).integrity == "corrupt"


def test_reading_verified_flags_missing_bytes_before_yielding_anything(store: Store) -> None:
    sid = store.create_session().session.id
    artifact = store.put_artifact(sid, b"x" * 10, name="a.bin")
    path_of(store, artifact).unlink()
    with pytest.raises(ArtifactCorrupt, match="missing"):
        store.iter_verified(artifact)
    assert store.get_artifact(sid, artifact.id).integrity == "missing"


# -- sessions being closed, artifacts being deleted ---------------------------------------


def begin_closing(store: Store, sid: str) -> None:
    """The first steps of closing a session: marked closing, then its bytes removed."""
    store.catalog.begin_close(sid, store.clock.now())
    store.blobs.delete_prefix(session_prefix(sid))


def test_a_session_being_closed_has_nothing_missing(any_store: Store) -> None:
    store = any_store
    sid, good, _, _ = three(store)
    closing = store.create_session(idle_timeout_s=None).session.id
    for n in range(3):
        store.put_artifact(closing, bytes([n]) * 100, name=f"{n}.bin")
    begin_closing(store, closing)

    report = store.verify()
    assert report.ok
    assert (report.checked_count, report.missing_count) == (3, 0)
    store.clock.advance(3600)  # type: ignore[attr-defined]
    scrubbed = run_verify(store.context, VerifyRequest(due_before=store.clock.now()), actor="scrub")
    assert scrubbed.ok
    assert (scrubbed.checked_count, scrubbed.missing_count) == (3, 0)
    assert store.get_artifact(sid, good.id).integrity is None


class RemoveWhenOpened:
    """A blob store through which a removal lands between verification reading a batch of
    records and opening one of its artifacts: what a close or a delete during a run does."""

    def __init__(self, blobs: Any, key: str, remove: Callable[[], object]) -> None:
        self._blobs = blobs
        self._key = key
        self._remove: Callable[[], object] | None = remove

    def open(self, key: str) -> BinaryIO:
        if self._remove is not None and key == self._key:
            remove, self._remove = self._remove, None
            remove()
        return self._blobs.open(key)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)


def racing(store: Store, key: str, remove: Callable[[], object]) -> Store:
    return Store(
        store.catalog, RemoveWhenOpened(store.blobs, key, remove), store.settings, store.clock
    )


@pytest.mark.parametrize("scrub", [False, True], ids=["verify", "scrub"])
def test_a_session_that_begins_closing_during_a_run_is_no_finding(
    any_store: Store, scrub: bool
) -> None:
    store = any_store
    sid, good, _, _ = three(store)
    verifier = racing(store, artifact_key(sid, good.id), lambda: begin_closing(store, sid))
    request = VerifyRequest(due_before=store.clock.now() if scrub else None)

    report = run_verify(verifier.context, request, actor="test")

    assert report.ok
    assert (report.missing_count, report.corrupt_count, report.problems) == (0, 0, [])
    assert store.catalog.flag_artifacts([(good.id, "missing", "no stored bytes")]) == set()


def test_an_artifact_deleted_during_a_run_is_no_finding(any_store: Store) -> None:
    store = any_store
    sid, good, _, missing = three(store)
    path_of(store, missing).unlink()

    def delete_good() -> None:
        store.catalog.mark_artifact_deleting(sid, good.id, store.clock.now())
        store.blobs.delete(artifact_key(sid, good.id))

    report = racing(store, artifact_key(sid, good.id), delete_good).verify()
    assert [(p.artifact_id, p.integrity) for p in report.problems] == [(missing.id, "missing")]


# -- the scrub ------------------------------------------------------------------------------


def test_the_scrub_finds_a_flipped_byte_and_a_deleted_file_within_its_period(
    any_store: Store,
) -> None:
    store = any_store
    clock = store.clock
    assert isinstance(clock, ManualClock)
    sid, good, corrupt, missing = three(store)
    flip_a_byte(store, corrupt)
    path_of(store, missing).unlink()
    scrub = Scrubber(store, period_s=3600, rate_mb_s=100)
    assert scrub.tick_s == 75

    elapsed = 0.0
    report = scrub.tick()
    while report is not None and report.checked_count == 0:
        assert elapsed < 3600, "the scrub did not find it within its period"
        clock.advance(scrub.tick_s)
        elapsed += scrub.tick_s
        report = scrub.tick()
    assert report is not None
    # Read once, when it fell due within the period: not before, and not at every tick.
    assert 3600 - scrub.tick_s <= elapsed < 3600
    assert (report.checked_count, report.corrupt_count, report.missing_count) == (3, 1, 1)
    assert store.get_artifact(sid, corrupt.id).integrity == "corrupt"
    assert store.get_artifact(sid, missing.id).integrity == "missing"
    assert store.get_artifact(sid, good.id).verified_at == clock.now()
    assert next(e.actor for e in store.audit_log(action="verify").items) == "scrub"


def test_the_scrub_reads_nothing_that_is_not_due_and_leaves_flags_to_verify(store: Store) -> None:
    sid, good, corrupt, _ = three(store)
    flip_a_byte(store, corrupt)
    store.verify()
    scrub = Scrubber(store, period_s=3600)
    store.clock.advance(1800)  # type: ignore[attr-defined]
    first = scrub.tick()
    assert first is not None
    assert first.checked_count == 0
    store.clock.advance(1800)  # type: ignore[attr-defined]
    second = scrub.tick()
    # The two that hashed right are due again; the flagged one waits for `ephemera verify`.
    assert second is not None
    assert (second.checked_count, second.corrupt_count) == (2, 0)
    assert store.get_artifact(sid, good.id).verified_at == store.clock.now()


def test_a_stopped_scrub_resumes_where_it_stopped(any_store: Store) -> None:
    store = any_store
    sid = store.create_session().session.id
    for n in range(5):
        store.put_artifact(sid, bytes([n]) * 100, name=f"{n}.bin")
    store.clock.advance(10)  # type: ignore[attr-defined]
    due = VerifyRequest(due_before=store.clock.now())
    store.clock.advance(1)  # type: ignore[attr-defined]
    stop = threading.Event()

    def stop_after_two(p: VerifyProgress) -> None:
        if p.done_count == 2:
            stop.set()

    first = run_verify(store.context, due, actor="scrub", progress=stop_after_two, stop=stop)
    assert first.interrupted
    assert first.checked_count == 2

    second = run_verify(store.context, due, actor="scrub")
    assert not second.interrupted
    assert second.checked_count == 3
    assert run_verify(store.context, due, actor="scrub").checked_count == 0


def test_one_process_scrubs_each_tick(data_dir: Path, clock: ManualClock) -> None:
    settings = Settings(data_dir=data_dir)
    with Store.open(settings, clock=clock) as a, Store.open(settings, clock=clock) as b:
        first, second = Scrubber(a, period_s=3600), Scrubber(b, period_s=3600)
        assert first.tick() is not None
        assert second.tick() is None
        clock.advance(first.tick_s + 1)  # the first missed its tick: the second takes over
        assert second.tick() is not None
        assert first.tick() is None


def test_a_scrub_that_loses_its_lock_stops_its_run(store: Store, clock: ManualClock) -> None:
    sid = store.create_session(idle_timeout_s=None).session.id
    stored = [store.put_artifact(sid, bytes([n]) * 100, name=f"{n}.bin") for n in range(5)]
    clock.advance(3600)

    def held_up_and_taken_over() -> None:
        # This run stalls past its lock's expiry, and another process takes the lock.
        clock.advance(scrub.tick_s + 1)
        now = clock.now()
        assert store.catalog.try_lock(LOCK, "another", now, now + timedelta(hours=1))

    second = artifact_key(sid, sorted(a.id for a in stored)[1])
    scrub = Scrubber(racing(store, second, held_up_and_taken_over), period_s=3600)

    report = scrub.tick()

    assert report is not None
    assert report.interrupted
    assert report.checked_count == 2
    assert sum(store.get_artifact(sid, a.id).verified_at is None for a in stored) == 4
    assert scrub.tick() is None  # the other process's until it lets go


def test_the_scrub_needs_a_period(store: Store) -> None:
    with pytest.raises(ValueError, match="period"):
        Scrubber(store, period_s=-1)
