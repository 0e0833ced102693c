"""Two `ephemera serve` replicas on one PostgreSQL and one blob store behave as one service."""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from ephemera import Settings, Store
from tests.conftest import SAMPLE_RUN_LINE, WITH_SAMPLES_ENV, Server, bearer
from tests.databases import PostgresDatabases
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


@dataclass
class Replicas:
    a: Server
    b: Server
    settings: Settings


@pytest.fixture(params=["directory", "s3"])
def start_replicas(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases
) -> Iterator[Callable[..., Replicas]]:
    """Start two replicas sharing a fresh PostgreSQL database and one blob store: a shared
    directory, or a bucket of the test S3 server."""
    started: list[Server] = []
    databases: list[str] = []
    blob_url = str(request.getfixturevalue("s3_url")) if request.param == "s3" else None

    def start(**env: str) -> Replicas:
        url = postgres_databases.fresh()
        databases.append(url)
        data_dir = tmp_path / "shared"
        settings = {
            "EPHEMERA_DATABASE_URL": url,
            "EPHEMERA_CLEANUP_INTERVAL_S": "1",
            "EPHEMERA_TASK_CLAIM_TTL_S": "3",
            **WITH_SAMPLES_ENV,
            **({"EPHEMERA_BLOB_URL": blob_url} if blob_url else {}),
            **env,
        }
        for _ in range(2):
            started.append(Server(data_dir, settings).start())
        shared = Settings(data_dir=data_dir, database_url=url, blob_url=blob_url)
        return Replicas(started[-2], started[-1], shared)

    try:
        yield start
    finally:
        for server in started:
            server.stop()
        for url in databases:
            postgres_databases.drop(url)


@pytest.fixture
def replicas(start_replicas: Callable[..., Replicas]) -> Replicas:
    return start_replicas()


def create(server: Server, session_id: str, **body: Any) -> str:
    answer = httpx.post(
        f"{server.api}/sessions", json={"id": session_id, **body}, headers=server.admin()
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


def test_a_session_lives_in_both_replicas_and_a_close_is_seen_at_once(
    replicas: Replicas,
) -> None:
    a, b = replicas.a, replicas.b
    token = create(a, "s1")
    put = httpx.post(
        f"{b.api}/sessions/s1/artifacts",
        params={"name": "x.bin"},
        content=b"bytes",
        headers=bearer(token),
    )
    assert put.status_code == 201, put.text
    artifact = put.json()["id"]
    got = httpx.get(f"{a.api}/sessions/s1/artifacts/{artifact}/content", headers=bearer(token))
    assert got.content == b"bytes"
    assert httpx.delete(f"{a.api}/sessions/s1", headers=bearer(token)).status_code == 200
    assert httpx.get(f"{b.api}/sessions/s1", headers=bearer(token)).status_code == 404
    assert (
        httpx.get(f"{b.api}/sessions/s1/artifacts/{artifact}", headers=bearer(token)).status_code
        == 404
    )


def test_their_schedulers_never_run_at_the_same_time(replicas: Replicas) -> None:
    with Store.open(replicas.settings) as store:

        def scheduled_runs() -> int:
            runs = store.audit_log(action="cleanup.all", limit=1000).items
            return sum(entry.actor == "scheduler" for entry in runs)

        # A few one-second ticks on each replica.
        wait_for(lambda: scheduled_runs() >= 4, 30, "four scheduled runs")
        runs = store.audit_log(action="cleanup.all", limit=1000).items
    spans = sorted(
        (entry.at - timedelta(seconds=entry.result["duration_s"]), entry.at)
        for entry in runs
        if entry.actor == "scheduler"
    )
    assert len(spans) >= 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "two scheduled runs overlapped"
    # One runner ticking each second, not one per replica: about one run a second, not two.
    window = (spans[-1][1] - spans[0][0]).total_seconds()
    assert len(spans) <= window + 2


def test_cleanup_requested_on_both_at_once_deletes_each_item_once(
    start_replicas: Callable[..., Replicas],
) -> None:
    # No scheduled runs: the two requested runs must share the work between themselves.
    replicas = start_replicas(EPHEMERA_SCHEDULED_CLEANUP="false")
    a, b = replicas.a, replicas.b
    with Store.open(replicas.settings) as store:
        store.create_session("bulk", idle_timeout_s=None)
        for i in range(300):
            store.put_artifact("bulk", b"x" * (i + 1), name=f"{i}.bin", expires_in_s=1)
    time.sleep(1.5)  # the servers' clocks are real: the artifacts expire by really waiting
    answers: list[dict[str, Any]] = []

    def clean(server: Server) -> None:
        answer = httpx.post(
            f"{server.api}/admin/cleanup/expired", headers=server.admin(), timeout=60
        )
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())

    threads = [threading.Thread(target=clean, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Store.open(replicas.settings) as store:
        assert store.list_artifacts("bulk").items == []
    assert [r["errors"] for r in answers] == [[], []]
    deleted = sum(r["deleted_count"] for r in answers)
    freed = sum(r["deleted_size_bytes"] for r in answers)
    assert (deleted, freed) == (300, sum(range(1, 301)))


def test_tasks_are_claimed_once_across_both(start_replicas: Callable[..., Replicas]) -> None:
    # Claims long enough that no heartbeat delayed by a loaded machine lets a running attempt
    # be taken for lost and run again (a retry, not a double claim): only claiming is tested.
    replicas = start_replicas(EPHEMERA_TASK_CLAIM_TTL_S="30")
    a = replicas.a
    token = create(a, "work")
    ids = []
    for _ in range(60):
        answer = httpx.post(
            f"{a.api}/sessions/work/tasks",
            json={"processor": "sample-sleep", "params": {"seconds": 0.2}},
            headers=bearer(token),
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    deadline = time.monotonic() + 60
    while True:
        page = httpx.get(
            f"{a.api}/sessions/work/tasks",
            params={"state": "succeeded", "limit": 1000},
            headers=bearer(token),
        ).json()
        if len(page["items"]) == len(ids):
            break
        assert time.monotonic() < deadline, f"{len(page['items'])} of {len(ids)} done"
        time.sleep(0.1)
    # Which process started which task, from each replica's own log (sample-sleep logs it):
    # the replica's server or one of its worker processes.
    runs = {
        server.process.pid: SAMPLE_RUN_LINE.findall(server.log.read_text())  # type: ignore[union-attr]
        for server in (replicas.a, replicas.b)
    }
    assert Counter(tid for found in runs.values() for tid, _ in found) == Counter(ids)
    for pid, found in runs.items():
        assert found, "both replicas took a share"
        assert all(int(p) in (pid, *children(pid)) for _, p in found)


def children(pid: int) -> list[int]:
    """The processes a process started and that still run (its worker processes)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def ready(store: Store) -> int:
    with store.catalog.engine.connect() as conn:
        return int(
            conn.exec_driver_sql("SELECT count(*) FROM artifacts WHERE state = 'ready'").scalar()
            or 0
        )


def test_a_replica_killed_during_cleanup_leaves_the_other_to_finish(
    start_replicas: Callable[..., Replicas],
) -> None:
    # No scheduled runs here: the run to interrupt must be the one requested.
    replicas = start_replicas(EPHEMERA_SCHEDULED_CLEANUP="false")
    a, b = replicas.a, replicas.b
    with Store.open(replicas.settings) as store:
        store.create_session("bulk", idle_timeout_s=None)
        for i in range(1500):
            store.put_artifact("bulk", b"y", name=f"{i}.bin", expires_in_s=1)
    time.sleep(1.5)  # the servers' clocks are real: the artifacts expire by really waiting
    started = threading.Event()

    def clean() -> None:
        started.set()
        with contextlib.suppress(httpx.TransportError):  # killed mid-answer, as intended
            httpx.post(f"{a.api}/admin/cleanup/expired", headers=a.admin(), timeout=60)

    runner = threading.Thread(target=clean)
    with Store.open(replicas.settings) as store:
        runner.start()
        started.wait()
        deadline = time.monotonic() + 30
        while ready(store) == 1500:  # until the run has claimed its first batch
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        runner.join()
        left, claimed = store.catalog.table_row_counts()["artifacts"], 1500 - ready(store)
    assert left > 0, "the kill came after the run had finished"
    assert claimed > 0

    assert httpx.get(f"{b.url}/readyz").status_code == 200
    finished = httpx.post(f"{b.api}/admin/cleanup/all", headers=b.admin(), timeout=120)
    assert finished.status_code == 200, finished.text
    assert finished.json()["errors"] == []
    with Store.open(replicas.settings) as store:
        assert store.list_artifacts("bulk").items == []
        assert [x.key for x in store.blobs.list("sessions/bulk/")] == []
        assert store.catalog.table_row_counts()["artifacts"] == 0
