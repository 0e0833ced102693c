"""The audit log's filters, as the library offers them: action prefix, exact actor, a time
range, and keyset pages that keep the filters (every backend runs these)."""

from __future__ import annotations

from datetime import datetime

import pytest

from ephemera import Store
from ephemera.errors import InvalidInput
from ephemera.testing import ManualClock


def record(store: Store, clock: ManualClock, actor: str, action: str) -> int:
    clock.advance(10)
    return store.audit(actor, action, None)


def test_the_actor_filter_is_exact(store: Store, clock: ManualClock) -> None:
    mine = record(store, clock, "admin:ops", "key.create")
    record(store, clock, "admin:ops2", "key.create")
    record(store, clock, "admin:op%", "key.create")
    assert [e.id for e in store.audit_log(actor="admin:ops").items] == [mine]
    assert [e.actor for e in store.audit_log(actor="admin:op%").items] == ["admin:op%"]


def test_the_time_range_includes_its_start_and_excludes_its_end(
    store: Store, clock: ManualClock
) -> None:
    ids = [record(store, clock, "t", "tick") for _ in range(4)]
    times = [e.at for e in reversed(store.audit_log(action="tick").items)]
    found = store.audit_log(action="tick", since=times[1], until=times[3]).items
    assert [e.id for e in found] == [ids[2], ids[1]]


def test_pages_of_a_filtered_log_go_back_by_id(store: Store, clock: ManualClock) -> None:
    ids = [record(store, clock, "pager", "page") for _ in range(5)]
    record(store, clock, "someone-else", "page")
    first = store.audit_log(actor="pager", limit=2)
    assert [e.id for e in first.items] == [ids[4], ids[3]]
    assert first.next_cursor is not None
    rest = store.audit_log(actor="pager", limit=10, before=int(first.next_cursor))
    assert [e.id for e in rest.items] == [ids[2], ids[1], ids[0]]
    assert rest.next_cursor is None


def test_a_time_without_a_zone_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.audit_log(since=datetime(2026, 1, 1))
    with pytest.raises(InvalidInput):
        store.audit_log(until=datetime(2026, 1, 1))
