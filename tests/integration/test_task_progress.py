"""A worker's progress: every step an event, the database written at most once an interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from ephemera import Settings, Store
from ephemera.models import TaskState
from ephemera.processors import Registry, TaskContext
from ephemera.worker import PROGRESS_WRITE_INTERVAL_S, StoreTaskContext, Worker
from tests.conftest import WITH_SAMPLES, MakeSettings
from tests.waiting import wait_for


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(task_claim_ttl_s=30, task_retry_delay_s=0, processors=WITH_SAMPLES)


class AnyParams(BaseModel):
    model_config = ConfigDict(extra="allow")


class Steps:
    """Runs under the name of an enabled processor; reports ``total`` steps, pausing
    ``pauses[step]`` seconds after a step."""

    params_model = AnyParams

    def __init__(self, total: int, pauses: dict[int, float] | None = None) -> None:
        self.name = "sample-upper"
        self.total = total
        self.pauses = pauses or {}
        self.paused = threading.Event()

    def run(self, ctx: TaskContext, params: AnyParams) -> dict[str, Any]:
        for done in range(self.total + 1):
            ctx.progress(done, self.total)
            if done in self.pauses:
                self.paused.set()
                time.sleep(self.pauses[done])
        return {"steps": self.total}


def count_heartbeats(store: Store) -> list[int]:
    """Counts the store's heartbeat writes (the worker's progress writes)."""
    calls = [0]
    original = store.heartbeat_task

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    store.heartbeat_task = counted  # type: ignore[method-assign]
    return calls


def progress_events(store: Store, session_id: str, token: str) -> list[tuple[int, int | None]]:
    feed = store.open_events(session_id, token, 0)
    steps: list[tuple[int, int | None]] = []
    while found := feed.read():
        steps += [(e.data["done"], e.data["total"]) for e in found if e.type == "task.progress"]
    return steps


def submit(store: Store) -> tuple[str, str, str]:
    created = store.create_session("s1")
    text = store.put_artifact("s1", b"abc", name="a.txt")
    task = store.submit_task("s1", "sample-upper", [text.id])
    return "s1", created.token, task.id


def test_every_step_of_a_short_task_is_an_event_but_the_database_is_written_once_or_twice(
    store: Store,
) -> None:
    sid, token, task_id = submit(store)
    heartbeats = count_heartbeats(store)
    worker = Worker(store, name="w", processors=Registry([Steps(50)]))

    started = time.monotonic()
    assert worker.run_one()
    took = time.monotonic() - started

    done = store.get_task(sid, task_id)
    assert done.state is TaskState.SUCCEEDED
    assert (done.progress_done, done.progress_total) == (50, 50)
    # Each step, in order, up to the last one, which the completion wrote.
    assert progress_events(store, sid, token) == [(i, 50) for i in range(51)]
    # The first step at once, then at most one write an interval; the rest with the end.
    assert heartbeats[0] <= 1 + int(took / PROGRESS_WRITE_INTERVAL_S), (heartbeats[0], took)
    print(f"\n51 steps in {took * 1e3:.0f} ms: {heartbeats[0]} progress writes")


def test_steps_left_waiting_are_written_by_the_heartbeat_thread_within_an_interval(
    store: Store,
) -> None:
    sid, _, task_id = submit(store)
    # Steps 0 and 1 at once: 0 is written, 1 waits; the processor then pauses.
    steps = Steps(3, pauses={1: 2.0})
    worker = Worker(store, name="w", processors=Registry([steps]), poll_interval_s=0.02)
    worker.start()
    try:
        assert steps.paused.wait(10)
        paused = time.monotonic()
        wait_for(
            lambda: store.get_task(sid, task_id).progress_done == 1,
            1.9,
            "the waiting step to be written",
            interval_s=0.02,
        )
        waited = time.monotonic() - paused
    finally:
        worker.stop(timeout_s=0)
    assert waited < 3 * PROGRESS_WRITE_INTERVAL_S, waited
    print(f"\nthe waiting step written {waited * 1e3:.0f} ms into the pause")


def test_steps_not_written_when_an_attempt_fails_are_recorded_with_the_failure(
    store: Store,
) -> None:
    class FailsAfterSteps(Steps):
        def run(self, ctx: TaskContext, params: AnyParams) -> dict[str, Any]:
            super().run(ctx, params)
            raise RuntimeError("broken")

    sid, token, task_id = submit(store)
    worker = Worker(store, name="w", processors=Registry([FailsAfterSteps(4)]))
    assert worker.run_one()
    done = store.get_task(sid, task_id)
    assert done.state is TaskState.FAILED
    assert "broken" in str(done.error)
    assert (done.progress_done, done.progress_total) == (4, 4)
    assert progress_events(store, sid, token) == [(i, 4) for i in range(5)]


def test_a_heartbeat_records_each_changed_step_it_carries_once(store: Store) -> None:
    sid, token, _ = submit(store)
    claim = store.claim_task("w1", ["sample-upper"])
    assert claim is not None
    steps: Sequence[tuple[int, int | None]] = [(0, 10), (3, 10), (3, 10), (5, 10)]
    store.heartbeat_task(claim.task.id, claim.claim_id, progress_steps=steps)
    store.heartbeat_task(claim.task.id, claim.claim_id, progress=(5, 10))
    task = store.get_task(sid, claim.task.id)
    assert (task.progress_done, task.progress_total) == (5, 10)
    assert progress_events(store, sid, token) == [(0, 10), (3, 10), (5, 10)]


def test_a_step_that_comes_while_its_percent_is_being_written_is_written_after(
    store: Store,
) -> None:
    sid, token, task_id = submit(store)
    claim = store.claim_task("w1", ["sample-upper"])
    assert claim is not None
    ctx = StoreTaskContext(store, claim)
    writing, go_on = threading.Event(), threading.Event()
    original = store.heartbeat_task

    def held(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        assert go_on.wait(10)
        return original(*args, **kwargs)

    ctx.progress(500, 1000)  # the first step is written at once
    ctx.progress(501, 1000)  # within the interval: it waits
    store.heartbeat_task = held  # type: ignore[method-assign]
    beat = threading.Thread(target=ctx.write_progress)
    beat.start()
    assert writing.wait(10)
    ctx.progress(502, 1000)  # the same percent as the step being written
    go_on.set()
    beat.join(10)
    store.heartbeat_task = original  # type: ignore[method-assign]
    with ctx.final_progress() as steps:
        assert steps == [(502, 1000)]
        store.heartbeat_task(task_id, claim.claim_id, progress_steps=steps)

    running = store.get_task(sid, task_id)
    assert (running.progress_done, running.progress_total) == (502, 1000)
    assert progress_events(store, sid, token) == [(500, 1000), (501, 1000), (502, 1000)]


def test_a_heartbeat_never_waits_behind_an_attempts_last_write(store: Store) -> None:
    """The heartbeat thread beats every running task in turn: one task's last write (which
    may delete its outputs) must not hold up the claims of the others."""
    _, _, task_id = submit(store)
    claim = store.claim_task("w1", ["sample-upper"])
    assert claim is not None
    ctx = StoreTaskContext(store, claim)
    with ctx.final_progress():
        beat = threading.Thread(target=ctx.heartbeat)
        beat.start()
        beat.join(5)
        waited = beat.is_alive()
    beat.join(5)
    assert not waited, "the heartbeat waited for the last write to end"
    assert store.get_task("s1", task_id).state is TaskState.RUNNING
