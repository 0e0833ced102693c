"""A cleanup report names what it spared: each protected item, the rule that selected it and
why it was spared, alike in a dry run and in the real run at the same moment."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ephemera import Store
from ephemera.cleanup import (
    CleanupReport,
    ItemKind,
    Operation,
    ProtectedItem,
    ProtectedReason,
    Rule,
)
from ephemera.console import cleanup_runs
from ephemera.http import create_app
from ephemera.testing import ManualClock
from tests.conftest import MakeSettings, bearer

CONTRACT = True

API = "/api/v1"
DAY = 24 * 3600

Spared = tuple[str, str, str | None, int, str, str]


def spared(report: CleanupReport) -> list[Spared]:
    return [(p.kind, p.id, p.session_id, p.size, p.rule, p.reason) for p in report.protected]


def by_part(report: CleanupReport) -> dict[str, list[Spared]]:
    return {str(part.operation): spared(part) for part in report.reports}


def dry_then_real(store: Store, operation: str, **kwargs: Any) -> tuple[CleanupReport, ...]:
    """A dry run, then the real run at the same instant (the clock does not move)."""
    dry = store.cleanup(operation, dry_run=True, details=True, **kwargs)
    real = store.cleanup(operation, details=True, **kwargs)
    return dry, real


def test_leased_and_retained_items_are_listed_with_their_reasons_alike_dry_and_real(
    store: Store, clock: ManualClock
) -> None:
    # A session a lease names as a whole, one only its retained artifact keeps, one both.
    store.create_session("held", idle_timeout_s=60)
    store.put_artifact("held", b"h" * 10, name="h.bin")
    store.take_lease("held", ttl_s=3600)
    store.create_session("kept", idle_timeout_s=60)
    kept = store.put_artifact("kept", b"k" * 20, name="k.bin")
    store.retain_artifact("kept", kept.id, clock.now() + timedelta(days=1))
    store.create_session("both", idle_timeout_s=60)
    both = store.put_artifact("both", b"b" * 5, name="b.bin")
    store.retain_artifact("both", both.id, clock.now() + timedelta(days=1))
    store.take_lease("both", ttl_s=3600, artifact_ids=[both.id])
    # A live session with two expired temporary artifacts, a lease naming one of them.
    store.create_session("work", idle_timeout_s=None)
    leased = store.put_artifact("work", b"l" * 30, name="l.bin", expires_in_s=60)
    free = store.put_artifact("work", b"f" * 40, name="f.bin", expires_in_s=60)
    store.take_lease("work", ttl_s=3600, artifact_ids=[leased.id])
    clock.advance(120)

    dry, real = dry_then_real(store, "all")

    expected = {
        "idle-sessions": [
            ("session", "both", "both", 5, "idle", "leased"),
            ("session", "held", "held", 10, "idle", "leased"),
            ("session", "kept", "kept", 20, "idle", "retained"),
        ],
        "expired": [("artifact", leased.id, "work", 30, "expired", "leased")],
        "old-results": [],
        "orphaned": [],
        "quota": [],
    }
    assert by_part(dry) == by_part(real) == expected
    assert [(part.operation, i.id) for part in real.reports for i in part.items] == [
        ("expired", free.id)
    ]
    for report in (dry, real):
        assert report.skipped_protected == 4
        assert report.protected == []  # `all` keeps its parts' lists, as with items
        for part in report.reports:
            assert part.skipped_protected == len(part.protected)


def test_the_protected_list_is_in_the_details_of_the_report(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("s1", idle_timeout_s=None)
    leased = store.put_artifact("s1", b"x" * 7, name="a.bin", expires_in_s=60)
    store.take_lease("s1", ttl_s=3600, artifact_ids=[leased.id])
    clock.advance(120)
    body = store.cleanup("expired", dry_run=True, details=True).as_dict(details=True)
    assert body["protected"] == [
        {
            "kind": "artifact",
            "id": leased.id,
            "session_id": "s1",
            "size": 7,
            "rule": "expired",
            "reason": "leased",
        }
    ]
    assert body["skipped_protected"] == 1


def test_without_details_protected_items_are_only_counted(store: Store, clock: ManualClock) -> None:
    store.create_session("s1", idle_timeout_s=60)
    artifact = store.put_artifact("s1", b"x", name="a.bin", expires_in_s=30)
    store.take_lease("s1", ttl_s=3600, artifact_ids=[artifact.id])
    clock.advance(120)
    for dry_run in (True, False):
        report = store.cleanup("all", dry_run=dry_run)
        assert report.skipped_protected == 2  # the session, then its artifact
        assert [part.protected for part in report.reports] == [[]] * len(report.reports)
        assert "protected" not in report.as_dict()


def test_a_spared_session_is_listed_at_the_size_a_real_run_leaves_it(
    make_settings: MakeSettings, clock: ManualClock
) -> None:
    """Under ``all``, the quota comes after ``expired``: a dry run has not deleted what
    ``expired`` reported, but lists the spared session as the real run finds it."""
    settings = make_settings(quota_high_water_bytes=50, quota_low_water_bytes=0)
    with Store.open(settings, clock=clock) as store:
        clock.catch_up()
        store.create_session("work", idle_timeout_s=None)
        leased = store.put_artifact("work", b"l" * 30, name="l.bin", expires_in_s=60)
        store.put_artifact("work", b"f" * 40, name="f.bin", expires_in_s=60)
        store.take_lease("work", ttl_s=3600, artifact_ids=[leased.id])
        store.create_session("other", idle_timeout_s=None)
        store.put_artifact("other", b"o" * 50, name="o.bin")
        clock.advance(120)
        dry, real = dry_then_real(store, "all")
    assert by_part(dry)["quota"] == by_part(real)["quota"]
    assert by_part(real)["quota"] == [("session", "work", "work", 30, "quota", "leased")]


def test_an_expired_lease_spares_nothing_and_lists_nothing(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("s1", idle_timeout_s=None)
    artifact = store.put_artifact("s1", b"x", name="a.bin", expires_in_s=60)
    store.take_lease("s1", ttl_s=300, artifact_ids=[artifact.id])
    clock.advance(120)
    dry, real = dry_then_real(store, "expired")
    assert spared(dry) == spared(real) != []
    clock.advance(300)  # the lease ran out, and the artifact was spared: it goes now
    dry, real = dry_then_real(store, "expired")
    assert spared(dry) == spared(real) == []
    assert [i.id for i in real.items] == [artifact.id]


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


def test_the_api_dry_run_with_details_lists_the_protected_items(
    store: Store, client: TestClient, clock: ManualClock
) -> None:
    admin = bearer(store.create_key("ops"))
    store.create_session("named", idle_timeout_s=None)
    named = store.put_artifact("named", b"n" * 3, name="n.bin", expires_in_s=60)
    store.take_lease("named", ttl_s=3600, artifact_ids=[named.id])
    store.create_session("whole", idle_timeout_s=None)
    whole = store.put_artifact("whole", b"w" * 4, name="w.bin", expires_in_s=60)
    taken = client.post(f"{API}/sessions/whole/leases", json={"ttl_s": 3600}, headers=admin)
    assert taken.status_code == 201, taken.text
    clock.advance(120)

    answer = client.post(
        f"{API}/admin/cleanup/expired", params={"dry_run": True, "details": True}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["skipped_protected"] == 2
    assert sorted(body["protected"], key=lambda p: p["session_id"]) == [
        {
            "kind": "artifact",
            "id": named.id,
            "session_id": "named",
            "size": 3,
            "rule": "expired",
            "reason": "leased",
        },
        {
            "kind": "artifact",
            "id": whole.id,
            "session_id": "whole",
            "size": 4,
            "rule": "expired",
            "reason": "leased",
        },
    ]
    counted = client.post(f"{API}/admin/cleanup/expired", params={"dry_run": True}, headers=admin)
    assert counted.json()["skipped_protected"] == 2
    assert counted.json().get("protected") is None


# -- the console's memory of a report -------------------------------------------------------


def test_the_console_keeps_the_first_protected_items_and_counts_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cleanup_runs, "ITEMS_KEPT", 3)
    report = CleanupReport(Operation.EXPIRED, dry_run=True, keep_items=True)
    for n in range(5):
        report.spare(
            ProtectedItem(ItemKind.ARTIFACT, f"a{n}", "s1", n, Rule.EXPIRED, ProtectedReason.LEASED)
        )
    summary = cleanup_runs.Summary.of(report)
    assert [s.item.id for s in summary.protected] == ["a0", "a1", "a2"]
    assert summary.skipped_protected == 5
    assert {s.because for s in summary.protected} == {
        "a valid lease names the artifact or its session"
    }
