"""Tasks through the library: queue, leases, claims, retries, cancellation, retention."""

from __future__ import annotations

import re
import time
from importlib.metadata import entry_points
from typing import Any

import cv2
import numpy as np
import pytest

from ephemera import Conflict, InvalidInput, NotFound, Settings, Store
from ephemera.catalog import TASKS
from ephemera.models import Claim, NewOutput, TaskState
from ephemera.processors import ENTRY_POINT_GROUP
from ephemera.testing import ManualClock
from ephemera.worker import Worker
from tests.conftest import WITH_SAMPLES, MakeSettings, snapshot
from tests.images import camera_matrix, render_chessboard_views
from tests.waiting import wait_for

CONTRACT = True

HOUR = 3600
DAY = 24 * HOUR


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(task_claim_ttl_s=30, task_retry_delay_s=0, processors=WITH_SAMPLES)


@pytest.fixture
def worker(store: Store) -> Worker:
    return Worker(store, name="test-worker")


def claim(store: Store, processors: list[str] | None = None) -> Claim:
    claimed = store.claim_task("w1", processors or ["sample-upper"])
    assert claimed is not None
    return claimed


def stored_keys(store: Store) -> list[str]:
    return sorted(b.key for b in store.blobs.list("sessions/"))


# -- processors and the registry -------------------------------------------------------------


def test_a_third_party_processor_the_settings_enable_is_found_through_its_entry_point_and_runs(
    store: Store, worker: Worker
) -> None:
    assert sorted(store.processors) == WITH_SAMPLES
    assert type(store.processors["sample-upper"]).__module__ == "ephemera_sample"

    store.create_session("s1")
    text = store.put_artifact("s1", b"hello plugin", name="note.txt")
    task = store.submit_task("s1", "sample-upper", [text.id], {"suffix": ".up"})
    assert worker.run_one()

    done = store.get_task("s1", task.id)
    assert done.state is TaskState.SUCCEEDED
    assert done.result == {"outputs": ["note.txt.up"]}
    (output,) = done.outputs
    assert store.read_artifact("s1", output.artifact_id) == b"HELLO PLUGIN"
    registered = {e.name: e.value for e in entry_points(group=ENTRY_POINT_GROUP)}
    assert registered["sample-upper"] == "ephemera_sample:upper"


def test_params_are_validated_at_submission_and_a_bad_request_changes_nothing(
    store: Store,
) -> None:
    store.create_session("s1")
    text = store.put_artifact("s1", b"x", name="x.txt")
    before = snapshot(store)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("sample-upper", {"suffix": 5}, "suffix"),
        ("sample-upper", {"unknown": 1}, "unknown"),
        (
            "no-such-processor",
            {},
            re.escape(
                f"processor 'no-such-processor' is not enabled (enabled: {', '.join(WITH_SAMPLES)})"
            ),
        ),
        ("roi-compare", {"capture": text.id, "regions": []}, "regions"),
    ]
    for processor, params, message in cases:
        with pytest.raises(InvalidInput, match=message):
            store.submit_task("s1", processor, [text.id], params)
    with pytest.raises(NotFound):
        store.submit_task("s1", "sample-upper", ["01a1fd3f-147d-75e5-bd31-fe6998c9f3b0"])
    assert snapshot(store) == before


# -- leases: what a task protects ------------------------------------------------------------


def test_a_running_tasks_inputs_survive_cleanup_and_its_outputs_age_out_after_it_ends(
    store: Store, clock: ManualClock
) -> None:
    session = store.create_session("s1", idle_timeout_s=35 * DAY)
    temporary = store.put_artifact("s1", b"input bytes", name="in.txt", expires_in_s=60)
    task = store.submit_task("s1", "sample-upper", [temporary.id])
    running = claim(store)
    output = store.put_task_output(task.id, running.claim_id, b"OUT", name="out.txt")

    # Past the input's expiry, the session's idle deadline, and the result retention.
    clock.advance(40 * DAY)
    store.heartbeat_task(task.id, running.claim_id)
    report = store.cleanup("all")
    assert report.deleted_count == 0
    assert report.skipped_protected >= 2
    assert store.read_artifact("s1", temporary.id) == b"input bytes"
    assert store.read_artifact("s1", output.id) == b"OUT"
    with pytest.raises(Conflict):
        store.delete_artifact("s1", temporary.id)
    with pytest.raises(Conflict):
        store.close_session("s1")

    store.authenticate("s1", session.token)  # the client is back: the session stays open
    store.complete_task(task.id, running.claim_id, {"ok": True})
    clock.advance(29 * DAY)
    assert store.cleanup("old-results").deleted_count == 0
    clock.advance(2 * DAY)
    old = store.cleanup("old-results", details=True)
    assert [(i.id, i.rule) for i in old.items] == [(output.id, "old-results")]

    finished = store.get_task("s1", task.id)
    assert finished.state is TaskState.SUCCEEDED
    assert finished.result == {"ok": True}
    assert [(o.artifact_id, o.removed) for o in finished.outputs] == [(output.id, True)]
    assert f"sessions/s1/{output.id}" not in stored_keys(store)
    # The expired input is no longer protected once the task ended.
    assert store.cleanup("expired").deleted_count == 1


def test_reference_data_of_another_session_needs_its_token_and_is_protected_while_used(
    store: Store, clock: ManualClock
) -> None:
    library = store.create_session("goldens", idle_timeout_s=HOUR)
    golden = store.put_artifact("goldens", b"golden", name="golden.png")
    store.create_session("line-1")
    with pytest.raises(NotFound):
        store.submit_task("line-1", "sample-upper", [("goldens", golden.id)])
    with pytest.raises(NotFound):
        store.submit_task(
            "line-1",
            "sample-upper",
            [("goldens", golden.id)],
            credentials={"goldens": "eps_wrong"},
        )
    task = store.submit_task(
        "line-1",
        "sample-upper",
        [("goldens", golden.id)],
        credentials={"goldens": library.token},
    )
    assert store.list_leases("goldens")[0].artifact_ids == (golden.id,)

    clock.advance(2 * HOUR)  # the library session is idle past its timeout
    assert store.cleanup("all").deleted_count == 0
    with pytest.raises(Conflict):
        store.close_session("goldens")

    running = claim(store)
    assert [a.id for a in running.inputs] == [golden.id]
    _, stream = store.open_task_input(task.id, running.claim_id, golden.id)
    with stream:
        assert stream.read() == b"golden"
    store.complete_task(task.id, running.claim_id)
    assert store.catalog.table_row_counts()["leases"] == 0
    assert store.cleanup("idle-sessions").deleted_count == 2


def test_task_leases_end_only_with_the_task(store: Store) -> None:
    store.create_session("s1")
    task = store.submit_task("s1", "sample-upper")
    (lease,) = store.list_leases("s1")
    assert lease.holder == f"task:{task.id}"
    with pytest.raises(Conflict, match="belongs to task"):
        store.release_lease("s1", lease.id)
    with pytest.raises(Conflict, match="belongs to task"):
        store.renew_lease("s1", lease.id)
    store.cancel_task("s1", task.id)
    assert store.list_leases("s1") == []


# -- claims: one running attempt at a time ---------------------------------------------------


def test_each_task_is_claimed_once_and_only_the_current_claim_finishes_it(store: Store) -> None:
    store.create_session("s1")
    first = store.submit_task("s1", "sample-upper")
    second = store.submit_task("s1", "sample-upper")
    a, b = claim(store), claim(store)
    assert [a.task.id, b.task.id] == [first.id, second.id]
    assert store.claim_task("w1", ["sample-upper"]) is None
    assert store.claim_task("w1", ["roi-compare"]) is None

    store.complete_task(a.task.id, a.claim_id, {"n": 1})
    with pytest.raises(Conflict):
        store.complete_task(a.task.id, a.claim_id, {"n": 2})
    with pytest.raises(Conflict):
        store.complete_task(b.task.id, a.claim_id)
    with pytest.raises(Conflict):
        store.heartbeat_task(a.task.id, a.claim_id)
    assert store.get_task("s1", first.id).result == {"n": 1}


def test_a_lost_worker_loses_its_claim_and_the_task_is_retried_then_fails_with_the_reason(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("s1")
    task = store.submit_task("s1", "sample-upper", max_attempts=2)
    lost = claim(store)
    store.put_task_output(task.id, lost.claim_id, b"partial", name="partial.txt")
    clock.advance(10)
    store.heartbeat_task(task.id, lost.claim_id, progress=(3, 10))
    assert store.get_task("s1", task.id).progress_done == 3
    assert store.claim_task("w2", ["sample-upper"]) is None  # still held

    clock.advance(31)  # the claim ran out: the worker is gone
    retry = claim(store)
    assert retry.task.id == task.id
    assert retry.task.attempts == 2
    assert "attempt 1 lost" in (retry.task.error or "")
    # The lost attempt's output is gone; its late writes and finish are refused.
    assert [o.name for o in store.get_task("s1", task.id).outputs] == []
    assert len(stored_keys(store)) == 0
    with pytest.raises(Conflict):
        store.put_task_output(task.id, lost.claim_id, b"late", name="late.txt")
    with pytest.raises(Conflict):
        store.complete_task(task.id, lost.claim_id)
    assert len(stored_keys(store)) == 0

    clock.advance(31)
    assert store.claim_task("w3", ["sample-upper"]) is None
    failed = store.get_task("s1", task.id)
    assert failed.state is TaskState.FAILED
    assert "gave up after 2 attempts" in (failed.error or "")
    assert store.list_leases("s1") == []


def test_a_failure_with_retry_requeues_while_attempts_remain(store: Store) -> None:
    store.create_session("s1")
    task = store.submit_task("s1", "sample-upper", max_attempts=2)
    first = claim(store)
    assert store.fail_task(task.id, first.claim_id, "flaky", retry=True).state is TaskState.PENDING
    second = claim(store)
    final = store.fail_task(task.id, second.claim_id, "flaky again", retry=True)
    assert (final.state, final.error, final.attempts) == (TaskState.FAILED, "flaky again", 2)


@pytest.mark.parametrize("retry_delay_s", [0, 5])
def test_a_requeued_task_wakes_idle_workers_only_once_it_is_claimable(
    make_settings: MakeSettings, retry_delay_s: float
) -> None:
    settings = make_settings(task_retry_delay_s=retry_delay_s, processors=WITH_SAMPLES)
    with Store.open(settings) as store:
        store.create_session("s1")
        task = store.submit_task("s1", "sample-upper", max_attempts=2)
        first = claim(store)
        with store.catalog.notifier.subscribe(TASKS) as wakeup:
            # On PostgreSQL the first subscriber starts the listener, which wakes everyone
            # once it listens: wait for the quiet.
            while wakeup.wait(0.5):
                pass
            store.fail_task(task.id, first.claim_id, "flaky", retry=True)
            # A retry not due yet is found by the safety poll; waking every idle worker
            # now would only have them find nothing.
            assert wakeup.wait(0.5) is (retry_delay_s == 0)


def test_an_idle_worker_looks_for_tasks_twice_a_second_without_a_wake_up(store: Store) -> None:
    assert Worker(store).poll_interval_s == 0.5


# -- cancellation ----------------------------------------------------------------------------


def test_cancelling_a_running_task_takes_its_claim_and_outputs_at_once(store: Store) -> None:
    store.create_session("s1")
    task = store.submit_task("s1", "sample-upper")
    running = claim(store)
    store.put_task_output(task.id, running.claim_id, b"half", name="half.txt")
    cancelled = store.cancel_task("s1", task.id)
    assert (cancelled.state, cancelled.outputs) == (TaskState.CANCELLED, ())
    assert stored_keys(store) == []
    with pytest.raises(Conflict):
        store.heartbeat_task(task.id, running.claim_id)
    with pytest.raises(Conflict):
        store.complete_task(task.id, running.claim_id)
    assert store.cancel_task("s1", task.id).state is TaskState.CANCELLED

    done = store.submit_task("s1", "sample-upper")
    store.complete_task(done.id, claim(store).claim_id)
    with pytest.raises(Conflict, match="already succeeded"):
        store.cancel_task("s1", done.id)


def test_a_forced_close_cancels_the_tasks_that_use_the_session(store: Store) -> None:
    library = store.create_session("goldens")
    golden = store.put_artifact("goldens", b"g", name="g.png")
    store.create_session("line-1")
    other = store.submit_task(
        "line-1", "sample-upper", [("goldens", golden.id)], credentials={"goldens": library.token}
    )
    running = claim(store)
    output = store.put_task_output(other.id, running.claim_id, b"o", name="o.txt")
    store.close_session("goldens", force=True)

    cancelled = store.get_task("line-1", other.id)
    assert cancelled.state is TaskState.CANCELLED
    assert "goldens was closed" in (cancelled.error or "")
    with pytest.raises(NotFound):
        store.get_artifact("line-1", output.id)
    assert store.list_leases("line-1") == []
    store.recover()
    assert stored_keys(store) == []


# -- the worker ------------------------------------------------------------------------------


def test_corrupt_inputs_fail_the_task_with_a_clear_message_and_change_nothing_else(
    store: Store, worker: Worker
) -> None:
    store.create_session("s1")
    text = store.put_artifact("s1", b"not an image at all", name="capture.png")
    region = {"name": "r1", "box": {"x": 0, "y": 0, "width": 4, "height": 4}}
    task = store.submit_task(
        "s1",
        "roi-compare",
        [text.id],
        {"capture": text.id, "regions": [{**region, "goldens": [text.id], "threshold": 0.5}]},
    )
    before = snapshot(store)
    assert worker.run_one()
    failed = store.get_task("s1", task.id)
    assert failed.state is TaskState.FAILED
    assert failed.error is not None
    assert "capture.png" in failed.error
    assert "not a decodable image" in failed.error
    after = snapshot(store)
    assert after.files == before.files
    assert after.rows["artifacts"] == before.rows["artifacts"]
    assert store.list_leases("s1") == []


def test_a_worker_runs_queued_tasks_on_its_threads_and_stops_cleanly(store: Store) -> None:
    store.create_session("s1")
    text = store.put_artifact("s1", b"abc", name="a.txt")
    tasks = [store.submit_task("s1", "sample-upper", [text.id]) for _ in range(20)]
    pool = Worker(store, concurrency=3, poll_interval_s=0.02)
    pool.start()
    try:
        wait_for(
            lambda: {store.get_task("s1", t.id).state for t in tasks} == {TaskState.SUCCEEDED},
            30,
            "the 20 tasks to succeed",
            interval_s=0.02,
        )
    finally:
        stopping = time.monotonic()
        pool.stop(timeout_s=5)
    assert time.monotonic() - stopping < 1  # idle threads stop at once, not at a timeout
    assert not any(thread.is_alive() for thread in pool._threads)
    assert {store.get_task("s1", t.id).state for t in tasks} == {TaskState.SUCCEEDED}
    assert all(store.get_task("s1", t.id).attempts == 1 for t in tasks)


def test_a_task_claimed_as_its_worker_stops_goes_back_to_the_queue_at_once(store: Store) -> None:
    # A claim still in flight when the worker stopped past its grace period (a worker process
    # whose server is gone stops with none): the task is stopped as it starts, not run unseen.
    store.create_session("s1")
    task = store.submit_task("s1", "sample-sleep", params={"seconds": 30})
    worker = Worker(store, name="stopping")
    worker.stop(timeout_s=0)
    started = time.monotonic()
    assert worker.run_one()
    assert time.monotonic() - started < 10
    requeued = store.get_task("s1", task.id)
    assert requeued.state is TaskState.PENDING
    assert requeued.attempts == 1


def test_camera_calibration_runs_as_a_task_and_stores_its_preview(
    store: Store, worker: Worker
) -> None:
    truth = {"fx": 900.0, "fy": 905.0, "cx": 484.0, "cy": 355.0}
    views = render_chessboard_views(
        camera_matrix(truth["fx"], truth["fy"], truth["cx"], truth["cy"]),
        columns=8,
        rows=5,
        square=0.03,
        size=(960, 720),
        count=8,
        seed=5,
        supersample=2,
    )
    store.create_session("calib")
    shots = [
        store.put_artifact("calib", v.png(), name=f"view-{i}.png") for i, v in enumerate(views)
    ]
    task = store.submit_task(
        "calib",
        "camera-calibration",
        [s.id for s in shots],
        {"board": {"columns": 8, "rows": 5}, "square_size": 0.03},
    )
    assert worker.run_one()

    done = store.get_task("calib", task.id)
    assert done.state is TaskState.SUCCEEDED, done.error
    result = done.result or {}
    for key, value in truth.items():
        assert result[key] == pytest.approx(value, rel=0.01), key
    assert result["rms"] < 0.5
    assert [image["found"] for image in result["images"]] == [True] * len(shots)
    (preview,) = done.outputs
    assert preview.artifact_id == result["preview"]["artifact_id"]
    image = cv2.imdecode(
        np.frombuffer(store.read_artifact("calib", preview.artifact_id), np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert image is not None
    assert image.shape[:2] == (720, 960)


def test_a_running_worker_stops_a_cancelled_task_and_goes_on_with_the_queue(
    store: Store,
) -> None:
    store.create_session("s1")
    slow = store.submit_task("s1", "sample-sleep", params={"seconds": 60})
    pool = Worker(store, poll_interval_s=0.02)
    pool.start()
    try:
        wait_for(
            lambda: store.get_task("s1", slow.id).state is TaskState.RUNNING,
            10,
            "the slow task to run",
            interval_s=0.02,
        )
        store.cancel_task("s1", slow.id)
        quick = store.submit_task("s1", "sample-sleep", params={"seconds": 0})
        wait_for(
            lambda: store.get_task("s1", quick.id).state is TaskState.SUCCEEDED,
            10,  # far less than the 60 s the cancelled task would sleep
            "the quick task: the worker is still busy with the cancelled task",
            interval_s=0.02,
        )
    finally:
        pool.stop(timeout_s=5)
    cancelled = store.get_task("s1", slow.id)
    assert (cancelled.state, cancelled.outputs, cancelled.attempts) == (
        TaskState.CANCELLED,
        (),
        1,
    )
    assert len(stored_keys(store)) == 1  # the quick task's output only


def test_outputs_stored_in_one_batch_are_all_recorded_or_none_is(store: Store) -> None:
    store.create_session("s1")
    task = store.submit_task("s1", "sample-upper")
    running = claim(store)
    batch = [NewOutput(f"out-{i}.txt", f"output {i}".encode()) for i in range(5)]
    stored = store.put_task_outputs(task.id, running.claim_id, batch)
    assert [store.read_artifact("s1", a.id) for a in stored] == [o.data for o in batch]
    assert all(a.producer == f"task:{task.id}" for a in stored)

    before = snapshot(store)
    with pytest.raises(InvalidInput):
        store.put_task_outputs(
            task.id, running.claim_id, [NewOutput("fine.txt", b"x"), NewOutput("../bad", b"y")]
        )
    with pytest.raises(Conflict):
        store.put_task_outputs(task.id, "not-the-claim", [NewOutput("late.txt", b"z")])
    assert snapshot(store) == before
    assert list(store.blobs.list_staged()) == []
