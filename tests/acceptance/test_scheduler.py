"""Scheduled cleanup: one runner per tick across processes, supervised, stoppable."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2 as httpx
import pytest

from ephemera import Settings, Store
from ephemera.cleanup import CleanupReport
from ephemera.scheduler import CleanupScheduler
from ephemera.testing import ManualClock
from tests.conftest import Server
from tests.databases import PostgresDatabases


def test_one_scheduler_runs_each_tick_and_another_takes_over(
    data_dir: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=data_dir, cleanup_interval_s=900)
    with Store.open(settings, clock=clock) as a, Store.open(settings, clock=clock) as b:
        first, second = CleanupScheduler(a), CleanupScheduler(b)
        assert first.tick() is not None
        assert second.tick() is None  # this tick is taken
        clock.advance(899)
        assert second.tick() is None
        clock.advance(2)  # the first runner missed its tick: the second takes over
        assert second.tick() is not None
        assert first.tick() is None
        actors = [e.actor for e in a.audit_log(action="cleanup.all").items]
        assert actors == ["scheduler", "scheduler"]


def test_the_loop_runs_at_start_survives_errors_and_stops_promptly(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, cleanup_interval_s=1)
    with Store.open(settings) as store:
        scheduler = CleanupScheduler(store, interval_s=0.05)
        failures = 0
        original = scheduler.tick

        def flaky() -> CleanupReport | None:
            nonlocal failures
            if failures < 2:
                failures += 1
                raise RuntimeError("database hiccup")
            return original()

        scheduler.tick = flaky  # type: ignore[method-assign]
        scheduler.start()
        deadline = time.monotonic() + 10
        while not store.audit_log(action="cleanup.all").items:
            assert time.monotonic() < deadline, "the scheduler never ran"
            time.sleep(0.01)
        started = time.monotonic()
        scheduler.stop(timeout_s=5)
        assert time.monotonic() - started < 5
        assert scheduler._thread is not None
        assert not scheduler._thread.is_alive()
        assert failures == 2


@pytest.mark.slow
def test_serve_runs_cleanup_at_start_up(server: Server) -> None:
    deadline = time.monotonic() + 20
    while True:
        entries = httpx.get(
            f"{server.api}/admin/audit", params={"action": "cleanup.all"}, headers=server.admin()
        ).json()["items"]
        if entries:
            break
        assert time.monotonic() < deadline, "no scheduled run was recorded"
        time.sleep(0.1)
    assert entries[0]["actor"] == "scheduler"


def test_on_postgresql_the_runner_holds_an_advisory_lock_until_it_goes(
    data_dir: Path, postgres_databases: PostgresDatabases
) -> None:
    url = postgres_databases.fresh()
    settings = Settings(data_dir=data_dir, database_url=url, cleanup_interval_s=900)
    a, b = Store.open(settings), Store.open(settings)
    try:
        first, second = CleanupScheduler(a), CleanupScheduler(b)
        assert first.tick() is not None
        assert second.tick() is None
        assert first.tick() is not None  # the holder runs every tick, whatever the clocks say
        with b.catalog.engine.connect() as conn:
            held = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).scalar()
        assert held == 1
        a.close()  # the runner goes: the server releases its lock when its backend exits
        deadline = time.monotonic() + 5
        while (report := second.tick()) is None:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)
        assert report.dry_run is False
    finally:
        b.close()
        a.close()
        postgres_databases.drop(url)
