"""Worker processes: a killed worker's task is retried elsewhere; every task runs once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.models import TaskState
from ephemera.testing import ManualClock
from tests.conftest import SAMPLE_RUN_LINE, WITH_SAMPLES, WITH_SAMPLES_ENV, _die_with_parent
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

CLAIM_TTL_S = 2


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        task_claim_ttl_s=CLAIM_TTL_S,
        task_retry_delay_s=0,
        processors=WITH_SAMPLES,
    )


@pytest.fixture
def start_worker(
    data_dir: Path, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "EPHEMERA_TASK_CLAIM_TTL_S": str(CLAIM_TTL_S),
        "EPHEMERA_TASK_RETRY_DELAY_S": "0",
        **WITH_SAMPLES_ENV,
    }

    def start(name: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{name}.log", "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ephemera",
                "worker",
                "--name",
                name,
                "--poll-interval",
                "0.05",
                "--data-dir",
                str(data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def runs_of(tmp_path: Path, worker: str) -> list[tuple[str, int]]:
    """(task ID, pid) of every run the worker process of this name started, in order."""
    log = tmp_path / f"worker-{worker}.log"
    if not log.exists():
        return []
    return [(tid, int(pid)) for tid, pid in SAMPLE_RUN_LINE.findall(log.read_text())]


def test_a_task_of_a_killed_worker_is_retried_by_another_and_completes_once(
    store: Store,
    clock: ManualClock,
    tmp_path: Path,
    start_worker: Callable[[str], subprocess.Popen[bytes]],
) -> None:
    store.create_session("s1", idle_timeout_s=None)
    task = store.submit_task("s1", "sample-sleep", params={"seconds": 3})

    doomed = start_worker("doomed")
    wait_for(lambda: len(runs_of(tmp_path, "doomed")) == 1, 30, "the first worker to start it")
    assert store.get_task("s1", task.id).state is TaskState.RUNNING
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)

    survivor = start_worker("survivor")
    wait_for(lambda: store.get_task("s1", task.id).state is TaskState.SUCCEEDED, 60, "the retry")
    done = store.get_task("s1", task.id)
    assert done.attempts == 2
    assert done.worker == "survivor"
    assert done.result == {"pid": survivor.pid}
    assert runs_of(tmp_path, "doomed") == [(task.id, doomed.pid)]
    assert runs_of(tmp_path, "survivor") == [(task.id, survivor.pid)]
    # Only the surviving attempt's output is the task's. Bytes the killed attempt left
    # (staged, or moved into place by a transaction that never committed) have no record,
    # and orphan reconciliation removes them once past the grace period.
    (output,) = done.outputs
    assert store.read_artifact("s1", output.artifact_id) == str(survivor.pid).encode()
    assert [a.id for a in store.list_artifacts("s1").items] == [output.artifact_id]
    clock.advance(store.settings.orphan_grace_s + 60)
    store.cleanup("orphaned")
    assert [b.key for b in store.blobs.list("sessions/")] == [f"sessions/s1/{output.artifact_id}"]
    assert list(store.blobs.list_staged()) == []


def test_two_worker_processes_complete_each_of_200_tasks_exactly_once(
    store: Store,
    tmp_path: Path,
    start_worker: Callable[[str], subprocess.Popen[bytes]],
) -> None:
    store.create_session("s1")
    tasks = [store.submit_task("s1", "sample-sleep") for _ in range(200)]
    workers = [start_worker("a"), start_worker("b")]

    def all_done() -> bool:
        page = store.list_tasks("s1", state=TaskState.SUCCEEDED, limit=1000)
        return len(page.items) == len(tasks)

    wait_for(all_done, 120, "200 tasks")
    runs = runs_of(tmp_path, "a") + runs_of(tmp_path, "b")
    assert Counter(tid for tid, _ in runs) == Counter(t.id for t in tasks)
    # Each log holds only its own process's runs, and both took a share.
    assert {pid for _, pid in runs_of(tmp_path, "a")} == {workers[0].pid}
    assert {pid for _, pid in runs_of(tmp_path, "b")} == {workers[1].pid}
    finished = store.list_tasks("s1", limit=1000).items
    assert {(t.state, t.attempts, len(t.outputs)) for t in finished} == {
        (TaskState.SUCCEEDED, 1, 1)
    }
    assert len(list(store.blobs.list("sessions/"))) == 200
