"""The console's sessions list: filters, orders, keyset pages, the figures of a page's rows,
and a page that costs one page at 100,000 sessions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, text

from ephemera import InvalidInput, Settings, Store
from ephemera.catalog.schema import artifacts, sessions
from ephemera.models import SessionState
from ephemera.store.browse import SessionFigures
from ephemera.testing import ManualClock

CONTRACT = True  # on SQLite and PostgreSQL


@pytest.fixture
def settings(data_dir: Path, database: str | None) -> Settings:
    return Settings(data_dir=data_dir, database_url=database)


def every_page(store: Store, limit: int, **query: Any) -> list[list[SessionFigures]]:
    pages = []
    cursor = None
    while True:
        found = store.browse_sessions(cursor=cursor, limit=limit, **query)
        pages.append(found.items)
        if found.next_cursor is None:
            return pages
        cursor = found.next_cursor


def ids_of(pages: list[list[SessionFigures]]) -> list[str]:
    return [row.session.id for page in pages for row in page]


def test_a_page_carries_each_sessions_artifacts_bytes_tasks_and_valid_leases(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("full", label="with things")
    store.create_session("empty")
    store.put_artifact("full", b"12345", name="a.bin")
    store.put_artifact("full", b"678", name="b.bin")
    store.take_lease("full", ttl_s=60)
    old = store.take_lease("full", ttl_s=1)
    clock.advance(2)  # the second lease is expired: it holds nothing any more
    assert not old.is_valid(clock.now())

    [empty, full] = store.browse_sessions().items
    assert (full.session.id, full.session.label) == ("full", "with things")
    assert (full.session.artifact_count, full.session.total_bytes) == (2, 8)
    assert full.leases == 1
    assert (empty.session.artifact_count, empty.session.total_bytes, empty.leases) == (0, 0, 0)
    assert store.session_figures("full") == full


def test_search_takes_an_id_prefix_or_a_piece_of_the_label_in_either_case(store: Store) -> None:
    store.create_session("Camera-7", label="line B")
    store.create_session("press-1", label="Camera calibration")
    store.create_session("press-2", label="100% done")
    store.create_session("xcamera", label=None)

    def found(words: str) -> list[str]:
        return sorted(r.session.id for r in store.browse_sessions(text=words).items)

    assert found("camera") == ["Camera-7", "press-1"]  # not xcamera: IDs match by prefix
    assert found("PRESS-") == ["press-1", "press-2"]
    assert found("LINE b") == ["Camera-7"]
    # LIKE's wildcards are plain characters to a search.
    assert found("0%") == ["press-2"]
    assert found("_") == []


def test_the_state_filter_tells_open_expired_and_closing_sessions(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("lasting", idle_timeout_s=None)
    store.create_session("fresh", idle_timeout_s=3600)
    store.create_session("short", idle_timeout_s=5)
    store.create_session("ending", idle_timeout_s=None)
    store.catalog.begin_close("ending", clock.now())
    clock.advance(10)

    def found(state: str | None) -> list[str]:
        return sorted(r.session.id for r in store.browse_sessions(state=state).items)

    assert found(None) == ["ending", "fresh", "lasting", "short"]
    assert found("open") == ["fresh", "lasting", "short"]
    assert found("expired") == ["short"]
    assert found("closing") == ["ending"]
    with pytest.raises(InvalidInput):
        store.browse_sessions(state="gone")


def made_in_turn(store: Store, clock: ManualClock) -> list[str]:
    """Sessions with distinct creation, activity and deadline, ties, and no deadline."""
    made = []
    for n, idle in enumerate([60, None, 30, 30, None, 90, 10, 60, None, 45, 20, 30]):
        sid = f"s{(n * 7) % 12:02d}"
        store.create_session(sid, idle_timeout_s=idle)
        made.append(sid)
        if n % 3:
            clock.advance(1)  # every third one shares the previous one's times
    store.catalog.begin_close("s07", clock.now())
    store.catalog.begin_close("s02", clock.now())
    return made


def expected(store: Store, key: Callable[[SessionFigures], Any]) -> list[str]:
    everything = store.browse_sessions(limit=1000).items
    return [row.session.id for row in sorted(everything, key=key)]


def deadline_key(row: SessionFigures) -> tuple[Any, ...]:
    s = row.session
    return (s.expires_at is None, s.expires_at or datetime.min, s.id)


def newest_key(moment: Callable[[SessionFigures], datetime]) -> Callable[[SessionFigures], Any]:
    def key(row: SessionFigures) -> tuple[float, list[int]]:
        return (-moment(row).timestamp(), [-ord(c) for c in row.session.id])

    return key


ORDERS: dict[str, Callable[[SessionFigures], Any]] = {
    "id": lambda row: row.session.id,
    "created": newest_key(lambda row: row.session.created_at),
    "activity": newest_key(lambda row: row.session.last_activity_at),
    "deadline": deadline_key,
    "state": lambda row: (row.session.state != SessionState.CLOSING, *deadline_key(row)),
}


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_pages_through_each_session_once_in_its_order(
    store: Store, clock: ManualClock, order: str
) -> None:
    made = made_in_turn(store, clock)
    want = expected(store, ORDERS[order])
    assert sorted(want) == sorted(made)
    for limit in (1, 2, 5, 12, 13):
        pages = every_page(store, limit, order=order)
        assert ids_of(pages) == want, limit
        assert all(len(page) == limit for page in pages[:-1])


def test_pages_keep_their_filter_across_cursors(store: Store, clock: ManualClock) -> None:
    made_in_turn(store, clock)
    open_ones = ids_of(every_page(store, 3, order="deadline", state="open"))
    assert "s07" not in open_ones
    assert "s02" not in open_ones
    assert len(open_ones) == 10


def test_a_cursor_is_refused_when_made_up_or_from_another_order(
    store: Store, clock: ManualClock
) -> None:
    made_in_turn(store, clock)
    cursor = store.browse_sessions(order="activity", limit=2).next_cursor
    assert cursor is not None
    with pytest.raises(InvalidInput):
        store.browse_sessions(order="deadline", cursor=cursor)
    for bad in ("nonsense", "", "W10", cursor[:-4]):
        with pytest.raises(InvalidInput):
            store.browse_sessions(order="activity", cursor=bad)
    with pytest.raises(InvalidInput):
        store.browse_sessions(order="size")


# -- 100,000 sessions ----------------------------------------------------------------------

MANY = 100_000
# Which index each order reads (on SQLite, the primary key of a text ID is its autoindex).
ORDER_INDEXES = {
    "id": "sqlite_autoindex_sessions_1",
    "created": "ix_sessions_created_at_id",
    "activity": "ix_sessions_last_activity_at_id",
    "deadline": "ix_sessions_expires_at_id",
    "state": "ix_sessions_state_expires_at_id",
}


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """SQLite with 100,000 sessions (one in a hundred closing, one in three without a
    deadline, every tenth one holding two artifacts), built in bulk."""
    data_dir = tmp_path_factory.mktemp("crowded") / "data"
    with Store.open(Settings(data_dir=data_dir)) as store:
        now = store.clock.now()
        session_rows = []
        artifact_rows = []
        for n in range(MANY):
            at = now - timedelta(seconds=n)
            sid = f"c{n:06d}"
            session_rows.append(
                {
                    "id": sid,
                    "token_hash": "0" * 64,
                    "label": f"station {n % 977}",
                    "metadata": {},
                    "state": "closing" if n % 100 == 0 else "open",
                    "created_at": at,
                    "last_activity_at": at - timedelta(seconds=n % 7),
                    "idle_timeout_s": 86_400,
                    "max_age_s": None,
                    "expires_at": None if n % 3 == 0 else at + timedelta(days=1),
                }
            )
            if n % 10 == 0:
                for k in range(2):
                    artifact_rows.append(
                        {
                            "id": f"01a1fcac-0000-7000-8000-{n * 2 + k:012x}",
                            "session_id": sid,
                            "name": "a.bin",
                            "kind": "input",
                            "content_type": "application/octet-stream",
                            "size": 100,
                            "sha256": "0" * 64,
                            "storage_class": "persistent",
                            "state": "ready",
                            "created_at": at,
                            "ready_at": at,
                        }
                    )
        with store.catalog.engine.begin() as conn:
            for start in range(0, MANY, 10_000):
                conn.execute(insert(sessions), session_rows[start : start + 10_000])
            conn.execute(insert(artifacts), artifact_rows)
        yield store


def plans_of(store: Store, call: Callable[[], object]) -> list[tuple[str, str]]:
    """Each distinct statement ``call`` runs, with SQLite's query plan for it."""
    seen: dict[str, Any] = {}

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.setdefault(statement, params)

    engine = store.catalog.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    plans = []
    with engine.connect() as conn:
        for statement, params in seen.items():
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            plans.append((statement, "\n".join(str(r[-1]) for r in rows)))
    return plans


@pytest.mark.parametrize("order", ORDER_INDEXES)
def test_each_order_reads_every_page_along_its_index_at_100000_sessions(
    crowded: Store, order: str
) -> None:
    """Every page of the whole list, through every segment of the order (sessions without a
    deadline come last, in a segment of their own): each query reads its rows in order
    along the order's index, and the figures read only the page's own rows."""
    pages = 0
    slowest = 0.0

    def walk() -> None:
        nonlocal pages, slowest
        cursor = None
        while True:
            started = time.perf_counter()
            found = crowded.browse_sessions(order=order, limit=1000, cursor=cursor)
            slowest = max(slowest, time.perf_counter() - started)
            pages += 1
            if found.next_cursor is None:
                return
            cursor = found.next_cursor

    plans = plans_of(crowded, walk)
    print(f"{order}: {pages} pages of 1000, the slowest in {1000 * slowest:.0f} ms")
    assert pages == MANY // 1000
    listing = [plan for statement, plan in plans if "FROM sessions" in statement]
    # The first page, and pages after a position: one statement per segment for each.
    assert len(listing) >= 2, plans
    for plan in listing:
        assert f"USING INDEX {ORDER_INDEXES[order]}" in plan or (
            order == "id" and "USING PRIMARY KEY" in plan
        ), plan
        assert "TEMP B-TREE" not in plan, plan  # never sorts: reads rows in order
    figures = [plan for statement, plan in plans if "FROM sessions" not in statement]
    assert {plan.split()[1] for plan in figures} == {"artifacts", "tasks", "leases"}
    for plan in figures:
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
        assert not any(line.startswith("SCAN") for line in plan.splitlines()), plan


FILTERS: list[dict[str, str]] = [
    {},
    {"state": "open"},
    {"state": "closing"},
    {"state": "expired"},
    {"text": "c04"},
    {"text": "station 42"},
    {"text": "no such thing"},
]


@pytest.mark.parametrize("order", ORDER_INDEXES)
def test_every_filtered_page_takes_well_under_a_second_at_100000_sessions(
    crowded: Store, order: str
) -> None:
    """Filters that match few sessions may read past a page (a label is searched by
    substring, which no index serves): measured, and bounded generously."""
    for query in FILTERS:
        started = time.perf_counter()
        first = crowded.browse_sessions(order=order, limit=50, **query)
        middle = time.perf_counter()
        if first.next_cursor is not None:
            crowded.browse_sessions(order=order, limit=50, cursor=first.next_cursor, **query)
        done = time.perf_counter()
        print(
            f"{order:9} {query!s:28} first {1000 * (middle - started):6.1f} ms, "
            f"next {1000 * (done - middle):6.1f} ms"
        )
        # A bound a loaded machine keeps; the plans above say the pages are indexed.
        assert done - started < 5.0


def test_the_figures_of_a_crowded_page_are_its_rows_own(crowded: Store) -> None:
    page = crowded.browse_sessions(order="id", limit=20).items
    plans = plans_of(crowded, lambda: crowded.browse_sessions(order="id", limit=20))
    # One query for the page, then one grouped query for each of artifacts, tasks, leases.
    assert len(plans) == 4, plans
    assert [row.session.id for row in page][:2] == ["c000000", "c000001"]
    by_id = {row.session.id: row.session for row in page}
    assert (by_id["c000000"].artifact_count, by_id["c000000"].total_bytes) == (2, 200)
    assert (by_id["c000010"].artifact_count, by_id["c000010"].total_bytes) == (2, 200)
    assert by_id["c000001"].artifact_count == 0
    with crowded.catalog.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM sessions")) == MANY
