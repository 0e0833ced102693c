"""What runs beside the API: nothing with ``create_app`` alone; with the service, recovery,
scheduled cleanup, the scrub and workers, started with the host app and stopped with it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ephemera import NotFound, Settings, Store
from ephemera.http import create_app
from ephemera.service import Service, lifespan
from tests.conftest import bearer

API = "/files/api/v1"


def ephemera_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("ephemera-")}


def scheduled_runs(store: Store) -> int:
    return sum(1 for e in store.audit_log(action="cleanup.all").items if e.actor == "scheduler")


@pytest.fixture
def service_store(data_dir: Path) -> Iterator[Store]:
    # Entry-point processors run when named; sample-upper comes from tests/plugins/sample.
    settings = Settings(data_dir=data_dir, workers=1, processors=["sample-upper"])
    with Store.open(settings) as store:
        yield store


def test_create_app_alone_runs_nothing_in_the_background(service_store: Store) -> None:
    before = ephemera_threads()
    with TestClient(create_app(service_store)) as client:
        assert client.get("/healthz").status_code == 200
        assert ephemera_threads() == before
    assert scheduled_runs(service_store) == 0


def test_a_host_app_with_the_lifespan_processes_tasks_and_cleans_up_on_schedule(
    service_store: Store,
) -> None:
    before = ephemera_threads()
    host = FastAPI(lifespan=lifespan(service_store))
    host.mount("/files", create_app(service_store))
    with TestClient(host) as client:
        started = {"ephemera-worker-0", "ephemera-cleanup", "ephemera-scrub"}
        assert started <= ephemera_threads() - before
        admin = bearer(service_store.create_key("host"))
        created = client.post(f"{API}/sessions", json={}, headers=admin).json()
        sid, token = created["id"], bearer(created["token"])
        uploaded = client.post(
            f"{API}/sessions/{sid}/artifacts",
            params={"name": "a.txt"},
            content=b"abc",
            headers=token,
        ).json()
        task = client.post(
            f"{API}/sessions/{sid}/tasks",
            json={"processor": "sample-upper", "inputs": [uploaded["id"]]},
            headers=token,
        ).json()
        deadline = time.monotonic() + 30
        while task["state"] in ("pending", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
            task = client.get(f"{API}/sessions/{sid}/tasks/{task['id']}", headers=token).json()
        assert task["state"] == "succeeded", task
        [output] = task["outputs"]
        content = client.get(
            f"{API}/sessions/{sid}/artifacts/{output['artifact_id']}/content", headers=token
        )
        assert content.content == b"ABC"
        assert scheduled_runs(service_store) >= 1
    # Stopped with the app: no thread of ours outlives it but the store's wake-up listener
    # (other processes' commits), which lives as long as the store.
    assert ephemera_threads() - before <= {"ephemera-wakeups"}


def test_settings_say_what_the_service_starts(data_dir: Path) -> None:
    before = ephemera_threads()
    settings = Settings(data_dir=data_dir, workers=0, scheduled_cleanup=False, scrub_period_s=0)
    with Store.open(settings) as store, Service(store):
        assert ephemera_threads() == before
    assert ephemera_threads() == before
    scrub_only = Settings(data_dir=data_dir, workers=0, scheduled_cleanup=False)
    with Store.open(scrub_only) as store, Service(store):
        assert ephemera_threads() - before == {"ephemera-scrub"}
    assert ephemera_threads() == before


def test_the_service_finishes_a_close_interrupted_by_a_crash(data_dir: Path) -> None:
    # Recovery alone: scheduled cleanup would finish the close as well.
    settings = Settings(data_dir=data_dir, workers=0, scheduled_cleanup=False)
    with Store.open(settings) as store:
        sid = store.create_session().session.id
        store.put_artifact(sid, b"left behind", name="a.bin")
        # What a crash between marking the session closing and removing its bytes leaves.
        store.catalog.begin_close(sid, store.clock.now())
        assert [b.key for b in store.blobs.list()] != []
        with Service(store):
            with pytest.raises(NotFound):
                store.get_session(sid)
            assert [b.key for b in store.blobs.list()] == []
