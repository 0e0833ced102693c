"""`ephemera serve` runs its tasks in supervised `ephemera worker` children: used for the
tasks, restarted when one dies (its task retried by the lease rules), gone with the server
however it ends, and the API's own process stays out of the processors' work."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx2 as httpx
import pytest

from ephemera import Settings, Store
from ephemera.models import TaskState
from tests.acceptance.test_tasks_http import create_session, upload, wait_for_task
from tests.conftest import SAMPLE_RUN_LINE, WITH_SAMPLES_ENV, Server, bearer
from tests.images import photo, png
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

WORKERS = 2
CLAIM_TTL_S = "2"
ENV = {
    **WITH_SAMPLES_ENV,
    "EPHEMERA_WORKER_MODE": "processes",
    "EPHEMERA_WORKERS": str(WORKERS),
    "EPHEMERA_TASK_CLAIM_TTL_S": CLAIM_TTL_S,
    "EPHEMERA_TASK_RETRY_DELAY_S": "0",
    "EPHEMERA_SCHEDULED_CLEANUP": "false",
}


def children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (zombies are dead: they count as gone)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cpu_s(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid(server: Server) -> int:
    assert server.process is not None
    return server.process.pid


def full_pool(server: Server) -> set[int]:
    """The server's worker processes once there are as many as asked for (else none)."""
    found = children(server_pid(server))
    return found if len(found) == WORKERS else set()


def started_pool(tmp_path: Path) -> tuple[Server, set[int]]:
    server = Server(tmp_path / "data", ENV).start()
    pool = wait_for(
        lambda: full_pool(server),
        30,
        lambda: f"{WORKERS} worker processes: {server.log.read_text()}",
    )
    return server, pool


def submit_sleep(server: Server, token: str, seconds: float) -> str:
    answer = httpx.post(
        f"{server.api}/sessions/s1/tasks",
        json={"processor": "sample-sleep", "inputs": [], "params": {"seconds": seconds}},
        headers=bearer(token),
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def runs(server: Server) -> list[tuple[str, int]]:
    return [(t, int(p)) for t, p in SAMPLE_RUN_LINE.findall(server.log.read_text())]


def test_tasks_run_in_the_worker_processes_not_in_the_server(tmp_path: Path) -> None:
    server, pool = started_pool(tmp_path)
    try:
        token = create_session(server, "s1")
        ids = [submit_sleep(server, token, 0.3) for _ in range(4)]
        done = [wait_for_task(server, "s1", token, i) for i in ids]
    finally:
        server.stop()
    assert [t["state"] for t in done] == ["succeeded"] * 4
    ran_in = {t["result"]["pid"] for t in done}
    assert ran_in <= pool
    assert server_pid(server) not in ran_in
    # Two at once, on the two processes.
    assert len(ran_in) == WORKERS


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_process_outlives_its_server(tmp_path: Path, how: signal.Signals) -> None:
    server, pool = started_pool(tmp_path)
    try:
        token = create_session(server, "s1")
        # One child busy with a task, one idle: neither may stay.
        task_id = submit_sleep(server, token, 60)
        wait_for(lambda: len(runs(server)) == 1, 30, "the task to start")
        assert server.process is not None
        server.process.send_signal(how)
        server.process.wait(60)
        wait_for(
            lambda: not any(alive(pid) for pid in pool),
            15,
            lambda: f"the workers {pool} to end: {server.log.read_text()}",
        )
    finally:
        server.stop()
    # The busy one gave its task back at once rather than finish it unseen.
    with Store.open(Settings(data_dir=server.data_dir), create=False) as store:
        task = store.get_task("s1", task_id)
    assert task.state is TaskState.PENDING


def test_a_killed_worker_process_is_replaced_and_its_task_retried(tmp_path: Path) -> None:
    server, pool = started_pool(tmp_path)
    try:
        token = create_session(server, "s1")
        task_id = submit_sleep(server, token, 2)
        ((_, doomed),) = wait_for(lambda: runs(server), 30, "the task to start")
        assert doomed in pool
        os.kill(doomed, signal.SIGKILL)

        def replaced_pool() -> set[int]:
            # The killed one may linger a moment before its exit is seen.
            found = full_pool(server)
            return found if doomed not in found else set()

        replaced = wait_for(
            replaced_pool,
            30,
            lambda: f"the pool back to {WORKERS}: {server.log.read_text()}",
        )
        task = wait_for_task(server, "s1", token, task_id)
    finally:
        server.stop()
    assert doomed not in replaced
    assert task["state"] == "succeeded", task["error"]
    assert task["attempts"] == 2
    assert task["result"]["pid"] != doomed
    assert task["result"]["pid"] in replaced


def test_the_server_process_does_not_do_the_processors_work(tmp_path: Path) -> None:
    # One CPU-heavy roi-compare: the worker process's CPU, not the API's.
    server, pool = started_pool(tmp_path)
    try:
        token = create_session(server, "s1")
        capture_id = upload(server, "s1", token, "capture.png", png(photo(1, (2400, 1800))))
        golden_id = upload(
            server, "s1", token, "golden.png", png(photo(2, (750, 600))), kind="golden"
        )
        regions = [
            {
                "name": f"r{i}",
                "box": {"x": 40 * i, "y": 30 * i, "width": 600, "height": 480},
                "goldens": [golden_id],
                "method": "ssim",
                "threshold": 0.0,
            }
            for i in range(30)
        ]
        before = cpu_s(server_pid(server))
        workers_before = {pid: cpu_s(pid) for pid in pool}
        answer = httpx.post(
            f"{server.api}/sessions/s1/tasks",
            json={
                "processor": "roi-compare",
                "inputs": [capture_id, golden_id],
                "params": {"capture": capture_id, "regions": regions},
            },
            headers=bearer(token),
        )
        assert answer.status_code == 201, answer.text
        task = wait_for_task(server, "s1", token, answer.json()["id"])
        server_cpu = cpu_s(server_pid(server)) - before
        worker_cpu = sum(cpu_s(pid) - workers_before[pid] for pid in pool if alive(pid))
    finally:
        server.stop()
    assert task["state"] == "succeeded", task["error"]
    print(f"\nCPU during the task: server {server_cpu:.2f} s, worker {worker_cpu:.2f} s")
    assert worker_cpu > 0.5
    assert server_cpu < worker_cpu / 4
