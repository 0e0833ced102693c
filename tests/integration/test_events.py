"""The event log through the library, on every backend: an event exists exactly when its change
committed; a feed reads a session's events in order, resumes, and says when some are lost."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event

from ephemera import Store
from ephemera.catalog import session_topic
from ephemera.errors import Conflict, InvalidInput, NotFound, TooLarge
from ephemera.models import Event
from ephemera.scheduler import CleanupScheduler
from ephemera.store.events import EventFeed, parse_last_event_id
from ephemera.testing import ManualClock
from tests.conftest import MakeSettings

CONTRACT = True


def drain(feed: EventFeed) -> list[Event]:
    found: list[Event] = []
    while batch := feed.read():
        found += batch
    return found


def kinds(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(e.type, e.data.get("artifact_id")) for e in events]


def test_an_event_exists_exactly_when_its_change_committed(make_settings: MakeSettings) -> None:
    with Store.open(make_settings(session_quota_bytes=10)) as store:
        created = store.create_session("s1")
        feed = store.open_events("s1", created.token)
        kept = store.put_artifact("s1", b"12345", name="a.txt")
        # Refused changes commit nothing, and so record nothing.
        with pytest.raises(TooLarge):
            store.put_artifact("s1", b"123456789", name="too-big.txt")
        lease = store.take_lease("s1", artifact_ids=[kept.id])
        with pytest.raises(Conflict):
            store.delete_artifact("s1", kept.id)
        store.release_lease("s1", lease.id)
        store.delete_artifact("s1", kept.id)
        # Deleting what is already being deleted changes nothing.
        with pytest.raises(NotFound):
            store.delete_artifact("s1", kept.id)
        got = drain(feed)
    assert kinds(got) == [("artifact.created", kept.id), ("artifact.deleted", kept.id)]
    assert got[0].data["sha256"] == kept.sha256
    assert got[0].data["size"] == 5
    assert got[1].data["by"] == "request"
    assert got[0].id < got[1].id


def test_cleanup_and_close_are_events_and_the_feed_ends_with_the_close(
    store: Store, clock: ManualClock
) -> None:
    created = store.create_session("s1")
    feed = store.open_events("s1", created.token)
    temporary = store.put_artifact("s1", b"t", name="t.txt", expires_in_s=60)
    persistent = store.put_artifact("s1", b"p", name="p.txt")
    clock.advance(61)
    assert store.cleanup("expired").deleted_count == 1
    store.close_session("s1")
    got = drain(feed)
    assert kinds(got) == [
        ("artifact.created", temporary.id),
        ("artifact.created", persistent.id),
        ("artifact.deleted", temporary.id),
        ("session.closing", None),
        ("session.closed", None),
    ]
    assert got[2].data["by"] == "cleanup"
    assert feed.ended
    assert feed.read() == []


def test_a_feed_resumes_after_an_event_and_never_reads_another_sessions(store: Store) -> None:
    a = store.create_session("a")
    b = store.create_session("b")
    everything = store.open_events("a", a.token, last_event_id=0)
    first = store.put_artifact("a", b"1", name="1")
    store.put_artifact("b", b"x", name="x")
    second = store.put_artifact("a", b"2", name="2")
    log = drain(everything)
    assert kinds(log) == [
        ("session.opened", None),
        ("artifact.created", first.id),
        ("artifact.created", second.id),
    ]
    resumed = store.open_events("a", a.token, last_event_id=log[1].id)
    assert resumed.reset is None
    assert drain(resumed) == log[2:]
    # b's token does not open a's events (and looks like a missing session).
    with pytest.raises(NotFound):
        store.open_events("a", b.token)


def test_an_id_past_the_sessions_newest_event_is_a_reset_whoever_has_it(store: Store) -> None:
    a = store.create_session("a")
    store.put_artifact("a", b"1", name="1")
    head = drain(store.open_events("a", a.token, last_event_id=0))[-1].id
    b = store.create_session("b")
    store.put_artifact("b", b"x", name="x")
    b_event = drain(store.open_events("b", b.token, last_event_id=0))[-1].id
    assert b_event > head
    # An ID another session's event has, and one no event has: the same answer, so that a
    # stream tells nothing of the rest of the service. Both start from a's newest event.
    for given in (b_event, b_event + 1_000):
        feed = store.open_events("a", a.token, last_event_id=given)
        assert feed.reset is not None, given
        assert feed.reset.id == head
        assert feed.reset.data == {
            "last_event_id": given,
            "reason": "events were lost: no event has this ID",
        }
        assert drain(feed) == []


def test_a_new_session_under_an_old_id_starts_with_an_empty_log(store: Store) -> None:
    old = store.create_session("s1")
    store.put_artifact("s1", b"old", name="old.txt")
    store.close_session("s1")
    new = store.create_session("s1")
    got = drain(store.open_events("s1", new.token, last_event_id=0))
    assert [e.type for e in got] == ["session.opened"]
    assert got[0].data["created_at"] == new.session.created_at.isoformat()
    with pytest.raises(NotFound):
        store.open_events("s1", old.token)


def test_a_resume_from_before_the_retention_window_starts_with_a_reset(
    make_settings: MakeSettings, clock: ManualClock
) -> None:
    with Store.open(make_settings(event_retention_s=60), clock=clock) as store:
        clock.catch_up()
        created = store.create_session("s1")
        old = [store.put_artifact("s1", bytes([n]), name=f"{n}") for n in range(3)]
        old_ids = [e.id for e in drain(store.open_events("s1", created.token, 0))]
        clock.advance(61)
        assert store.prune_events() == len(old_ids) - 1  # the newest event is always kept
        recent = store.put_artifact("s1", b"new", name="new")

        feed = store.open_events("s1", created.token, last_event_id=old_ids[0])
        assert feed.reset is not None
        assert feed.reset.type == "reset"
        assert feed.reset.data["last_event_id"] == old_ids[0]
        assert kinds(drain(feed)) == [
            ("artifact.created", old[-1].id),
            ("artifact.created", recent.id),
        ]
        # From the newest event kept, nothing was lost.
        intact = store.open_events("s1", created.token, last_event_id=old_ids[-1])
        assert intact.reset is None
        assert kinds(drain(intact)) == [("artifact.created", recent.id)]
        # An ID no event has yet would skip the next ones: a reset, from now on.
        ahead = store.open_events("s1", created.token, last_event_id=10**12)
        assert ahead.reset is not None
        assert drain(ahead) == []
        # The old event kept as the newest goes once a newer one exists; then nothing is due.
        assert store.prune_events() == 1
        assert store.prune_events() == 0


def test_finding_what_is_due_reads_the_time_index_not_the_whole_log(store: Store) -> None:
    # Every scheduled tick prunes; with nothing due, its cost must not follow the log's size.
    store.create_session("s1")
    store.put_artifact("s1", b"x", name="x")
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(store.catalog.engine, "before_cursor_execute", seen)
    try:
        assert store.prune_events() == 0
    finally:
        event.remove(store.catalog.engine, "before_cursor_execute", seen)

    due = [(s, p) for s, p in statements if "events" in s and "<" in s]
    assert due, statements
    with store.catalog.engine.connect() as conn:
        for statement, parameters in due:
            if store.catalog.dialect == "sqlite":
                rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            else:
                conn.exec_driver_sql("SET enable_seqscan = off")
                rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            plan = " ".join(str(row) for row in rows.all())
            assert "ix_events_at" in plan, (statement, plan)


def test_a_commit_wakes_its_sessions_subscribers_and_a_refused_change_does_not(
    make_settings: MakeSettings,
) -> None:
    with Store.open(make_settings(session_quota_bytes=10)) as store:
        store.create_session("s1")
        store.create_session("s2")
        with (
            store.catalog.notifier.subscribe(session_topic("s1")) as s1,
            store.catalog.notifier.subscribe(session_topic("s2")) as s2,
        ):
            # On PostgreSQL the first subscriber starts the listener, which wakes everyone
            # once it listens (anything may have changed before): wait for the quiet.
            while s1.wait(0.5) or s2.wait(0.01):
                pass
            with pytest.raises(TooLarge):
                store.put_artifact("s1", b"123456789012", name="too-big")
            assert not s1.wait(0.2)
            threading.Timer(0.1, lambda: store.put_artifact("s1", b"1", name="1")).start()
            assert s1.wait(5)
            assert not s2.wait(0.2)


@pytest.mark.parametrize("given", ["x", "-1", "1.5", "١٢", "9" * 20])
def test_a_last_event_id_that_is_not_an_event_id_is_refused(given: str) -> None:
    with pytest.raises(InvalidInput, match="Last-Event-ID"):
        parse_last_event_id(given)


@pytest.mark.parametrize("how", ["scheduler", "cleanup all", "cleanup orphaned"])
def test_cleanup_prunes_the_events_past_retention_by_the_stores_clock(
    make_settings: MakeSettings, clock: ManualClock, how: str
) -> None:
    with Store.open(make_settings(event_retention_s=60), clock=clock) as store:
        clock.catch_up()
        created = store.create_session("s1")
        store.put_artifact("s1", b"1", name="1")
        clock.advance(61)
        store.put_artifact("s1", b"2", name="2")
        store.put_artifact("s1", b"3", name="3")
        if how == "scheduler":
            assert CleanupScheduler(store).tick() is not None
        else:
            store.cleanup(how.split()[1], actor="test")
        replay = store.open_events("s1", created.token, last_event_id=0)
        kept = drain(replay)
    # The opening and the first upload were due; the reset says so to a replay from 0. The
    # upload of "2" is not the newest event: it is kept for its time, by the store's clock.
    assert replay.reset is not None
    assert [(e.type, e.data["name"]) for e in kept] == [
        ("artifact.created", "2"),
        ("artifact.created", "3"),
    ]
    assert all(e.at == clock.now() for e in kept)


def test_a_dry_run_prunes_no_event(make_settings: MakeSettings, clock: ManualClock) -> None:
    with Store.open(make_settings(event_retention_s=60), clock=clock) as store:
        clock.catch_up()
        created = store.create_session("s1")
        store.put_artifact("s1", b"1", name="1")
        clock.advance(61)
        store.put_artifact("s1", b"2", name="2")
        store.cleanup("all", dry_run=True, actor="test")
        replay = store.open_events("s1", created.token, last_event_id=0)
        assert replay.reset is None
        assert [e.type for e in drain(replay)] == ["session.opened"] + ["artifact.created"] * 2
