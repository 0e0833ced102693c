"""The maintained artifact totals (counts and bytes by storage class and state) always equal
a full count of the artifacts table: after any sequence of uploads, deletes, closes,
cleanups, task outputs and resumable-upload commits, on SQLite and on PostgreSQL, and while
writers and folds run at once on PostgreSQL. Reading them never reads the artifacts table."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, func, select

from ephemera import Conflict, NotFound, Settings, Store
from ephemera.catalog.migrate import alembic_config
from ephemera.catalog.schema import artifacts
from ephemera.testing import ManualClock
from ephemera.worker import Worker
from tests.conftest import WITH_SAMPLES
from tests.databases import PostgresDatabases

CONTRACT = True

OPERATIONS = ("expired", "idle-sessions", "old-results", "quota", "all")


def totals_settings(database: str | None, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database,
        processors=WITH_SAMPLES,
        scheduled_cleanup=False,
        quota_high_water_bytes=600,
        quota_low_water_bytes=300,
        result_retention_days=1.0,
    )


@pytest.fixture
def totals_store(database: str | None, tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    with Store.open(totals_settings(database, tmp_path / "data"), clock=clock) as opened:
        clock.catch_up()
        yield opened


@pytest.fixture
def postgres_store(postgres_databases: PostgresDatabases, tmp_path: Path) -> Iterator[Store]:
    url = postgres_databases.fresh()
    try:
        with Store.open(totals_settings(url, tmp_path / "data")) as opened:
            yield opened
    finally:
        postgres_databases.drop(url)


def counted(store: Store) -> list[tuple[str, str, int, int]]:
    """What a full pass over the artifacts table finds."""
    query = (
        select(
            artifacts.c.storage_class,
            artifacts.c.state,
            func.count(),
            func.coalesce(func.sum(artifacts.c.size), 0),
        )
        .group_by(artifacts.c.storage_class, artifacts.c.state)
        .order_by(artifacts.c.storage_class, artifacts.c.state)
    )
    with store.catalog.engine.connect() as conn:
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in conn.execute(query)]


def assert_totals_exact(store: Store) -> None:
    assert store.catalog.artifact_breakdown() == counted(store)
    assert store.catalog.stored_bytes() == sum(row[3] for row in counted(store))


def random_step(store: Store, worker: Worker, clock: ManualClock, rng: random.Random) -> str:
    sessions = [s.id for s in store.list_sessions(limit=1000).items if s.state == "open"]
    choice = rng.choice(
        ["session"] * 2
        + ["put"] * 5
        + ["delete", "close", "task", "tus", "interrupt", "clock"]
        + ["cleanup"] * 2
        + ["fold", "retain"]
    )
    if choice == "session" or not sessions:
        store.create_session(idle_timeout_s=rng.choice((60, 3600, None)))
        return "session"
    sid = rng.choice(sessions)
    try:
        # An open session past its deadline is gone for the API: NotFound, nothing to do.
        ready = [a for a in store.list_artifacts(sid, limit=1000).items if a.state == "ready"]
        if choice == "put":
            temporary = rng.random() < 0.4
            store.put_artifact(
                sid,
                b"x" * rng.randrange(0, 90),
                name="f.bin",
                kind=rng.choice(("input", "output", "result")),
                storage="temporary" if temporary else None,
                expires_in_s=rng.choice((30, 7200)) if temporary else None,
            )
        elif choice == "delete" and ready:
            store.delete_artifact(sid, rng.choice(ready).id)
        elif choice == "close":
            store.close_session(sid, force=True)
        elif choice == "task" and ready:
            store.submit_task(sid, "sample-upper", [rng.choice(ready).id])
            worker.run_one()
        elif choice == "tus":
            body = b"t" * rng.randrange(1, 70)
            upload = store.resumable.create(sid, len(body), {"filename": "t.bin"})
            appender = store.resumable.begin_append(sid, upload.id, 0)
            appender.write([body])
            appender.finish()
        elif choice == "interrupt" and ready:
            # A delete stopped after its record was marked: a later cleanup finishes it.
            store.catalog.mark_artifact_deleting(sid, rng.choice(ready).id, clock.now())
        elif choice == "clock":
            clock.advance(rng.choice((10, 61, 3601, 2 * 86400)))
        elif choice == "cleanup":
            store.cleanup(rng.choice(OPERATIONS), dry_run=rng.random() < 0.3)
        elif choice == "fold":
            store.catalog.fold_totals()
        elif choice == "retain" and ready:
            until = clock.now() + timedelta(seconds=rng.choice((60, 86400)))
            store.retain_artifact(sid, rng.choice(ready).id, until)
    except (Conflict, NotFound):
        pass  # a protected artifact, a session closed meanwhile: nothing changed
    return choice


@pytest.mark.parametrize("seed", [1, 2])
def test_the_totals_equal_a_full_count_after_any_sequence_of_operations(
    totals_store: Store, clock: ManualClock, seed: int
) -> None:
    rng = random.Random(seed)
    worker = Worker(totals_store, name="totals-worker")
    done: set[str] = set()
    for _ in range(150):
        done.add(random_step(totals_store, worker, clock, rng))
        assert_totals_exact(totals_store)
    assert counted(totals_store) != []
    assert {"put", "delete", "close", "task", "tus", "cleanup"} <= done


def test_upgrading_a_store_that_holds_artifacts_counts_them(totals_store: Store) -> None:
    """Migration 0011 starts the totals from what is already stored; its downgrade removes
    them and their triggers, and upgrading again counts afresh."""
    store = totals_store
    sid = store.create_session().session.id
    store.put_artifact(sid, b"abc", name="a.bin")
    store.put_artifact(sid, b"defg", name="b.bin", storage="temporary")
    with store.catalog.engine.connect() as conn:
        command.downgrade(alembic_config(conn), "0010")
        conn.commit()
    store.put_artifact(sid, b"hijkl", name="c.bin")  # no trigger counts this one
    store.catalog.migrate()

    assert store.catalog.artifact_breakdown() == [
        ("persistent", "ready", 2, 8),
        ("temporary", "ready", 1, 4),
    ]
    assert_totals_exact(store)


def statements_of(store: Store, call: Any) -> list[str]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(store.catalog.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(store.catalog.engine, "before_cursor_execute", record)
    return seen


ARTIFACTS_TABLE = re.compile(r'\b(from|join|update|into)\s+"?artifacts"?(\s|$)|\bartifacts\.', re.I)


def reads_artifacts(statement: str) -> bool:
    """Whether a statement names the artifacts table (not the totals' ``artifacts`` column)."""
    return ARTIFACTS_TABLE.search(statement) is not None


def test_the_quota_with_nothing_to_evict_reads_no_artifact_row(totals_store: Store) -> None:
    store = totals_store
    sid = store.create_session().session.id
    for n in range(20):
        store.put_artifact(sid, b"q" * n, name=f"{n}.bin")

    seen = statements_of(store, lambda: store.cleanup("quota"))

    assert [s for s in seen if "artifact_totals" in s], "the quota read no totals"
    # The check itself sees a read of the table:
    assert any(reads_artifacts(s) for s in statements_of(store, lambda: counted(store)))
    assert not [s for s in seen if reads_artifacts(s)]
    stats = statements_of(store, store.catalog.artifact_breakdown)
    assert not [s for s in stats if reads_artifacts(s)]


def test_concurrent_writers_and_folds_keep_the_totals_exact_on_postgresql(
    postgres_store: Store,
) -> None:
    store = postgres_store
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            sid = store.create_session().session.id
            kept = []
            for _ in range(25):
                kept.append(store.put_artifact(sid, b"w" * rng.randrange(1, 40), name="w.bin"))
                if rng.random() < 0.3:
                    store.delete_artifact(sid, kept.pop(rng.randrange(len(kept))).id)
            if seed % 2:
                store.close_session(sid)
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    def folder(stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                store.catalog.fold_totals()
        except BaseException as exc:
            errors.append(exc)

    stop = threading.Event()
    folders = [threading.Thread(target=folder, args=(stop,)) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in [*folders, *writers]:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in folders:
        thread.join()

    assert errors == []
    assert_totals_exact(store)
    store.catalog.fold_totals()
    assert_totals_exact(store)
