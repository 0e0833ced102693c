"""Orphan reconciliation on a PostgreSQL database whose text collates by a locale (ICU en-US,
common in production): it merges the blob store's session names, in byte order, with the
recorded session IDs, so it must read those in byte order too, or it takes live sessions for
trees without a record and their records for lost bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from ephemera import Settings, Store
from ephemera.catalog.schema import sessions
from ephemera.cleanup import CleanupReport
from ephemera.testing import ManualClock
from tests.databases import PostgresDatabases

HOUR = 3600
# IDs that en-US and bytes order differently: en-US ignores case and punctuation first
# (a_b, a-1, a1, ab, b, B-c, ...), bytes put every capital before every small letter.
SESSIONS = ["a-1", "A_2", "a1", "a_b", "ab", "b", "B-c", "m_n-o", "Z", "z-Z", "Zz_9"]
# A folder with no record and a blob no record names: the orphans there really are.
GHOST_SESSION = "Mx_gone"
GHOST = f"sessions/{GHOST_SESSION}/01a1fcac-0000-7000-8000-000000000001"
STRAY = "sessions/b/01a1fcac-0000-7000-8000-000000000000"


@pytest.fixture
def en_us(postgres_databases: PostgresDatabases) -> Iterator[str]:
    url = postgres_databases.empty(icu_locale="en-US")
    try:
        yield url
    finally:
        postgres_databases.drop(url)


@pytest.fixture
def en_us_settings(data_dir: Path, en_us: str) -> Settings:
    return Settings(
        data_dir=data_dir, database_url=en_us, orphan_slice_sessions=2, orphan_interval_s=HOUR
    )


@pytest.fixture
def en_us_store(en_us_settings: Settings, clock: ManualClock) -> Iterator[Store]:
    with Store.open(en_us_settings, clock=clock) as opened:  # migrates the empty database
        clock.catch_up()
        plant(opened, clock)
        yield opened


def plant(store: Store, clock: ManualClock) -> None:
    """Each session with two artifacts, the two orphans, then time past the grace period."""
    for sid in SESSIONS:
        store.create_session(sid, idle_timeout_s=None)
        store.put_artifact(sid, b"kept", name="k.bin")
        store.put_artifact(sid, b"also kept", name="l.bin")
    for key in (STRAY, GHOST):
        writer = store.blobs.writer(key)
        writer.write(b"orphan")
        writer.commit()
    clock.catch_up()
    clock.advance(HOUR + 1)


def recorded(store: Store) -> set[str]:
    return {f"sessions/{sid}/{a.id}" for sid in SESSIONS for a in store.list_artifacts(sid).items}


def stored(store: Store) -> set[str]:
    return {b.key for b in store.blobs.list("sessions/")}


def found(report: CleanupReport) -> list[str]:
    return sorted(i.id for i in report.items)


def assert_only_the_orphans_went(store: Store, reports: list[CleanupReport]) -> None:
    assert sorted(i for r in reports for i in found(r)) == [GHOST, STRAY]
    assert len(recorded(store)) == 2 * len(SESSIONS)  # no record purged
    assert stored(store) == recorded(store)  # every live byte kept, every orphan gone
    assert [e for r in reports for e in r.errors] == []  # no "ready record without bytes"


def test_the_database_orders_the_ids_unlike_their_bytes(en_us_store: Store) -> None:
    """The premise of this module: were the orders equal, its other tests would prove nothing."""
    with en_us_store.catalog.engine.connect() as conn:
        in_database_order = list(conn.scalars(select(sessions.c.id).order_by(sessions.c.id)))
    assert in_database_order != sorted(SESSIONS)
    assert en_us_store.catalog.session_ids(None, 100) == sorted(SESSIONS)


def test_orphaned_removes_only_the_orphans_and_loses_no_live_byte(en_us_store: Store) -> None:
    dry = en_us_store.cleanup("orphaned", dry_run=True, purge_missing=True, details=True)
    real = en_us_store.cleanup("orphaned", purge_missing=True, details=True)
    assert found(dry) == found(real)
    assert_only_the_orphans_went(en_us_store, [real])


def test_a_lap_of_slices_visits_every_name_once_in_byte_order(en_us_store: Store) -> None:
    slices: list[CleanupReport] = []
    while not (slices and slices[-1].slice and slices[-1].slice["lap_done"]):
        assert len(slices) <= len(SESSIONS)  # a lap ends
        slices.append(
            en_us_store.cleanup("orphaned", incremental=True, purge_missing=True, details=True)
        )
    positions: list[Any] = [r.slice["through"] for r in slices if r.slice]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    assert sum(r.slice["sessions"] for r in slices if r.slice) == len(SESSIONS) + 1
    assert_only_the_orphans_went(en_us_store, slices)


def test_a_merge_that_goes_wrong_still_costs_no_live_byte(
    en_us_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second line of defence: a tree is an orphan only once a point query finds no record
    of its session, and a session's records are compared with its folder even when the
    merge did not pair them. Here the recorded IDs come in the database's own order (the
    query before it asked for byte order), so the merge pairs the names wrongly."""
    catalog = en_us_store.catalog

    def in_database_order(after: str | None, limit: int) -> list[str]:
        query = select(sessions.c.id).order_by(sessions.c.id).limit(limit)
        if after is not None:
            query = query.where(sessions.c.id > after)
        with catalog.engine.connect() as conn:
            return list(conn.scalars(query))

    monkeypatch.setattr(catalog, "session_ids", in_database_order)
    dry = en_us_store.cleanup("orphaned", dry_run=True, purge_missing=True, details=True)
    real = en_us_store.cleanup("orphaned", purge_missing=True, details=True)
    assert found(dry) == found(real)
    assert_only_the_orphans_went(en_us_store, [real])


def test_the_pages_of_ids_are_read_from_the_byte_order_index(en_us_store: Store) -> None:
    """Without the index (or with a query whose collation is not the index's) every page
    would sort the whole sessions table."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    engine = en_us_store.catalog.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        en_us_store.catalog.session_ids(None, 3)
        en_us_store.catalog.session_ids("B-c", 3)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    pages = [(s, p) for s, p in seen if "FROM sessions" in s]
    assert len(pages) == 2
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # a table this small is cheaper read
        for statement, parameters in pages:
            plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars())
            assert "ix_sessions_id_byte_order" in plan, plan
            assert "Sort" not in plan, plan
