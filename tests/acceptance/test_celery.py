"""ephemera.contrib.celery in a real `celery worker` on the local Redis broker, against a real
`ephemera serve` that cleans up every second and never counts requests as activity.

The inputs are temporary and expire within a second or two, so only a task's lease keeps
them: a task that reads its input after the expiry shows that cleanup spared it, and a worker
killed outright shows that its lease, no longer renewed, stops protecting anything.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ephemera.client import Client
from ephemera.contrib.celery import on_session
from tests.conftest import Server, _die_with_parent, serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
REDIS_URL = os.environ.get("EPHEMERA_TEST_REDIS", "redis://127.0.0.1:6379/13")
LEASE_TTL_S = 3


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """The Redis database of these tests, emptied before and after."""
    db = redis.Redis.from_url(REDIS_URL)
    try:
        db.ping()
    except redis.ConnectionError as exc:
        reason = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    db.flushdb()
    try:
        yield REDIS_URL
    finally:
        db.flushdb()
        db.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"EPHEMERA_CLEANUP_INTERVAL_S": "1", "EPHEMERA_ACTIVITY_WRITE_INTERVAL_S": "3600"}
    with serving(tmp_path_factory.mktemp("celery") / "data", env) as running:
        yield running


class Worker:
    """A `celery worker` process group (the main process and its pool child)."""

    def __init__(self, broker: str, server: Server, log: Path) -> None:
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "EPHEMERA_TEST_REDIS": broker,
            "EPHEMERA_SERVER_URL": server.url,
            "EPHEMERA_TOKEN": server.admin_key,
            "EPHEMERA_LEASE_TTL_S": str(LEASE_TTL_S),
        }
        command = [sys.executable, "-m", "celery", "-A", "tests.acceptance.celery_tasks"]
        command += ["worker", "--pool=prefork", "--concurrency=1", "--loglevel=INFO"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text():
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL to the whole group: nothing of the worker runs another instruction."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker(broker: str, server: Server, tmp_path: Path) -> Iterator[Worker]:
    running = Worker(broker, server, tmp_path / "worker.log")
    try:
        yield running
    finally:
        running.stop()


def tasks() -> Any:
    from tests.acceptance import celery_tasks

    return celery_tasks


def stored(server: Server, artifact_id: str) -> bool:
    """The artifact's bytes are on the server's disk."""
    return any(p.is_file() for p in server.data_dir.rglob(artifact_id))


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def temporary_input(admin: Client, data: bytes, expires_in_s: int) -> tuple[str, str, str]:
    created = admin.create_session(idle_timeout_s=600)
    sid = created.session.id
    artifact = admin.upload_artifact(
        sid, data, name="in.txt", storage="temporary", expires_in_s=expires_in_s
    )
    return sid, created.token, artifact.id


def test_a_task_processes_an_artifact_under_a_lease_and_cleanup_spares_its_input(
    server: Server, admin: Client, worker: Worker
) -> None:
    # The task must hold its lease before the input expires: a loaded machine may take a few
    # seconds to hand the task to the worker, so the input lives 10 s and the lease is seen
    # well before that; the task reads it 13 s in, after cleanups every second past expiry.
    sid, token, input_id = temporary_input(admin, b"inspect me", expires_in_s=10)
    began = time.time()
    sent = tasks().upper.delay(on_session(sid, token, artifacts=[input_id]), input_id, 13)
    assert within(8, lambda: len(admin.list_leases(sid)) == 1), "no lease 8 s after sending"

    result = sent.get(timeout=60)

    runs = [e for e in admin.audit_log(action="cleanup.all") if e.at.timestamp() > began + 10]
    assert len(runs) >= 2
    assert admin.read_artifact(sid, result["output"]) == b"INSPECT ME"
    assert admin.list_leases(sid) == []
    # Released, the expired input goes at the next cleanup.
    assert within(5, lambda: not stored(server, input_id))


def test_a_failing_or_revoked_task_releases_its_lease_at_once(
    server: Server, admin: Client, worker: Worker
) -> None:
    sid, token, _ = temporary_input(admin, b"x", expires_in_s=600)
    failing = tasks().long.delay(on_session(sid, token), 0.5, True)
    with pytest.raises(RuntimeError, match="the processing failed"):
        failing.get(timeout=60)
    assert admin.list_leases(sid) == []  # not after its 120 s TTL: now

    running = tasks().long.delay(on_session(sid, token), 60, False)
    assert within(20, lambda: len(admin.list_leases(sid)) == 1)
    running.revoke(terminate=True)
    assert within(5, lambda: admin.list_leases(sid) == [])


def test_after_a_worker_is_killed_its_lease_expires_and_cleanup_takes_what_it_protected(
    server: Server, admin: Client, worker: Worker
) -> None:
    sid, token, input_id = temporary_input(admin, b"in the middle", expires_in_s=1)
    tasks().upper.delay(on_session(sid, token, artifacts=[input_id]), input_id, 120)
    assert within(20, lambda: len(admin.list_leases(sid)) == 1)
    time.sleep(2)  # past the input's expiry: the lease alone keeps it
    assert stored(server, input_id)

    worker.kill()
    [lease] = admin.list_leases(sid)

    # Until the lease runs out, it still protects the input (cleanups run every second) ...
    while time.time() < lease.expires_at.timestamp() - 0.3:
        assert stored(server, input_id)
        time.sleep(0.1)
    # ... and no longer renewed, it does run out; then cleanup takes the input.
    assert within(5, lambda: not stored(server, input_id))
    assert admin.list_leases(sid) == []


def test_the_example_app_schedules_cleanup_all_and_its_task_runs_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.schedules import crontab

    # Loaded as the worker would (`celery -A examples.celery_app`), by its file.
    spec = importlib.util.spec_from_file_location("celery_app", ROOT / "examples/celery_app.py")
    assert spec is not None
    assert spec.loader is not None
    example: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    [entry] = example.app.conf.beat_schedule.values()
    assert entry["task"] == example.cleanup.name == "ephemera.cleanup"
    assert entry["kwargs"] == {"operation": "all", "dry_run": False}
    assert entry["schedule"] == crontab(minute="*/15")
    # What beat would send, run here against the real server with the admin key.
    monkeypatch.setenv("EPHEMERA_SERVER_URL", server.url)
    monkeypatch.setenv("EPHEMERA_TOKEN", server.admin_key)
    report = example.cleanup.apply(kwargs=entry["kwargs"]).get()
    assert report["operation"] == "all"
    assert not report["dry_run"]
    with Client(server.url, server.admin_key) as admin:
        [last, *_] = admin.audit_log(action="cleanup.all")
    assert last.actor.startswith("admin:")
