"""Admin faces over HTTP: cleanup on demand, stats, audit, leases, metrics, the rate limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ephemera import InvalidInput, Settings, Store
from ephemera.http import create_app
from ephemera.http.admin import SharedStats
from ephemera.testing import ManualClock
from tests.conftest import WITH_SAMPLES, bearer

API = "/api/v1"


@pytest.fixture
def admin_store(data_dir: Path, clock: ManualClock) -> Iterator[Store]:
    settings = Settings(data_dir=data_dir, cleanup_requests_per_minute=5, processors=WITH_SAMPLES)
    with Store.open(settings, clock=clock) as store:
        yield store


@pytest.fixture
def client(admin_store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(admin_store)) as test_client:
        yield test_client


@pytest.fixture
def admin(admin_store: Store) -> dict[str, str]:
    return bearer(admin_store.create_key("ops"))


def session(client: TestClient, admin: dict[str, str], **body: Any) -> dict[str, str]:
    created = client.post(f"{API}/sessions", json=body, headers=admin).json()
    return {"id": created["id"], **bearer(created["token"])}


def upload(client: TestClient, sid: str, auth: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": "a.bin", **params},
        content=b"x" * 10,
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


ADMIN_ROUTES = [
    ("POST", "/admin/cleanup/all"),
    ("POST", "/admin/cleanup/expired?dry_run=true"),
    ("POST", "/admin/cleanup/session/s1"),
    ("GET", "/admin/cleanup/stats"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/sessions"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_refuse_session_tokens_and_missing_keys(
    client: TestClient, admin: dict[str, str], method: str, path: str
) -> None:
    s = session(client, admin, id="s1")
    token = {"Authorization": s["Authorization"]}
    assert client.request(method, API + path, headers=token).status_code == 403
    assert client.request(method, API + path).status_code == 401
    # A forged key is an unknown key: 401, as for any key that does not authenticate.
    assert client.request(method, API + path, headers=bearer("epa_forged")).status_code == 401


def test_cleanup_on_demand_reports_and_the_dry_run_matches(
    client: TestClient, admin: dict[str, str], clock: ManualClock
) -> None:
    s = session(client, admin, idle_timeout_s=None)
    auth = {"Authorization": s["Authorization"]}
    doomed = upload(client, s["id"], auth, expires_in_s=60)
    upload(client, s["id"], auth)
    clock.advance(61)
    dry = client.post(
        f"{API}/admin/cleanup/expired", params={"dry_run": True, "details": True}, headers=admin
    ).json()
    real = client.post(
        f"{API}/admin/cleanup/expired", params={"details": True}, headers=admin
    ).json()
    assert (
        dry["items"]
        == real["items"]
        == [
            {
                "kind": "artifact",
                "id": doomed["id"],
                "session_id": s["id"],
                "size": 10,
                "rule": "expired",
            }
        ]
    )
    assert {
        k: real[k] for k in ("operation", "dry_run", "deleted_count", "deleted_size_bytes")
    } == {
        "operation": "expired",
        "dry_run": False,
        "deleted_count": 1,
        "deleted_size_bytes": 10,
    }
    assert set(real) >= {"deleted_size_mb", "skipped_protected", "errors", "duration_s"}


def test_all_gives_one_report_per_operation_and_totals(
    client: TestClient, admin: dict[str, str]
) -> None:
    body = client.post(f"{API}/admin/cleanup/all", headers=admin).json()
    assert [r["operation"] for r in body["reports"]] == [
        "idle-sessions",
        "expired",
        "old-results",
        "orphaned",
        "quota",
    ]
    assert body["totals"]["deleted_count"] == 0


def test_unknown_operations_and_bad_parameters_are_refused(
    client: TestClient, admin: dict[str, str]
) -> None:
    assert client.post(f"{API}/admin/cleanup/everything", headers=admin).status_code == 422
    assert (
        client.post(f"{API}/admin/cleanup/all", params={"hours_old": -1}, headers=admin).status_code
        == 422
    )
    assert client.post(f"{API}/admin/cleanup/session/nope", headers=admin).status_code == 404


def test_cleanup_requests_are_rate_limited_per_key(
    client: TestClient, admin: dict[str, str], admin_store: Store
) -> None:
    statuses = [
        client.post(f"{API}/admin/cleanup/quota", headers=admin).status_code for _ in range(6)
    ]
    assert statuses == [200] * 5 + [429]
    limited = client.post(f"{API}/admin/cleanup/quota", headers=admin)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    other = bearer(admin_store.create_key("other"))
    assert client.post(f"{API}/admin/cleanup/quota", headers=other).status_code == 200


def test_every_run_and_admin_action_is_audited_with_its_actor(
    client: TestClient, admin: dict[str, str]
) -> None:
    s = session(client, admin, id="audited")
    client.post(f"{API}/admin/cleanup/expired", params={"dry_run": True}, headers=admin)
    client.delete(f"{API}/sessions/audited", headers=admin)
    entries = client.get(f"{API}/admin/audit", headers=admin).json()["items"]
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("admin:ops", "session.close", "audited"),
        ("admin:ops", "cleanup.expired", None),
        ("admin:ops", "session.create", "audited"),
    ]
    assert entries[1]["params"] == {"dry_run": True}
    assert entries[1]["result"]["deleted_count"] == 0
    # A session's own token closing its session is not an admin action.
    own = session(client, admin, id="own")
    client.delete(f"{API}/sessions/own", headers={"Authorization": own["Authorization"]})
    newest = client.get(f"{API}/admin/audit", params={"limit": 1}, headers=admin).json()
    assert newest["items"][0]["action"] == "session.create"
    assert newest["next_cursor"] is not None
    assert s["id"] == "audited"


def test_stats_show_storage_cleanable_leases_usage_and_last_runs(
    client: TestClient, admin: dict[str, str], clock: ManualClock
) -> None:
    s = session(client, admin, idle_timeout_s=None)
    auth = {"Authorization": s["Authorization"]}
    upload(client, s["id"], auth, expires_in_s=60)
    upload(client, s["id"], auth)
    client.post(f"{API}/sessions/{s['id']}/leases", json={"ttl_s": 30}, headers=auth)
    client.post(f"{API}/admin/cleanup/quota", headers=admin)
    clock.advance(61)
    stats = client.get(f"{API}/admin/cleanup/stats", headers=admin).json()
    assert stats["sessions"] == {"open": 1}
    assert sorted((a["storage_class"], a["count"], a["bytes"]) for a in stats["artifacts"]) == [
        ("persistent", 1, 10),
        ("temporary", 1, 10),
    ]
    assert stats["cleanable"]["expired"] == {"count": 1, "bytes": 10, "skipped_protected": 0}
    assert stats["leased"] == {"leases": 0, "sessions": 0, "artifacts": 0}  # it expired
    assert stats["usage"]["stored_bytes"] == 20
    assert stats["last_runs"]["quota"]["actor"] == "admin:ops"


def test_admin_session_list_counts_valid_leases(client: TestClient, admin: dict[str, str]) -> None:
    s = session(client, admin, id="leased")
    auth = {"Authorization": s["Authorization"]}
    upload(client, "leased", auth)
    client.post(f"{API}/sessions/leased/leases", json={}, headers=auth)
    page = client.get(f"{API}/admin/sessions", headers=admin).json()
    assert [(x["id"], x["lease_count"], x["total_bytes"]) for x in page["items"]] == [
        ("leased", 1, 10)
    ]
    assert page["totals"] == {"sessions": 1, "artifacts": 1, "bytes": 10}


def test_leases_over_http(client: TestClient, admin: dict[str, str], clock: ManualClock) -> None:
    s = session(client, admin, id="w", idle_timeout_s=None)
    auth = {"Authorization": s["Authorization"]}
    artifact = upload(client, "w", auth, expires_in_s=30)
    taken = client.post(
        f"{API}/sessions/w/leases",
        json={"ttl_s": 60, "holder": "worker-7", "artifact_ids": [artifact["id"]]},
        headers=auth,
    )
    assert taken.status_code == 201
    lease = taken.json()
    assert (lease["holder"], lease["artifact_ids"]) == ("worker-7", [artifact["id"]])
    url = f"{API}/sessions/w/leases/{lease['id']}"
    assert client.get(url, headers=auth).json() == lease
    assert (
        client.delete(f"{API}/sessions/w/artifacts/{artifact['id']}", headers=auth).status_code
        == 409
    )
    assert client.delete(f"{API}/sessions/w", headers=auth).status_code == 409
    clock.advance(50)
    renewed = client.post(f"{url}/renew", json={"ttl_s": 60}, headers=auth).json()
    assert renewed["expires_at"] > lease["expires_at"]
    clock.advance(50)  # past the artifact's expiry, within the renewed lease
    report = client.post(f"{API}/admin/cleanup/all", headers=admin).json()
    assert (report["totals"]["deleted_count"], report["totals"]["skipped_protected"]) == (0, 1)
    assert client.get(f"{API}/sessions/w/leases", headers=auth).json()["items"] == [renewed]
    assert client.delete(url, headers=auth).status_code == 204
    assert client.delete(url, headers=auth).status_code == 404
    assert client.post(f"{API}/admin/cleanup/expired", headers=admin).json()["deleted_count"] == 1


def test_an_expired_lease_cannot_be_renewed(
    client: TestClient, admin: dict[str, str], clock: ManualClock
) -> None:
    s = session(client, admin, id="w", idle_timeout_s=None)
    auth = {"Authorization": s["Authorization"]}
    lease = client.post(f"{API}/sessions/w/leases", json={"ttl_s": 10}, headers=auth).json()
    clock.advance(11)
    renew = client.post(f"{API}/sessions/w/leases/{lease['id']}/renew", json={}, headers=auth)
    assert renew.status_code == 409


def test_leases_refuse_what_is_not_there(client: TestClient, admin: dict[str, str]) -> None:
    a = session(client, admin, id="a")
    b = session(client, admin, id="b")
    other = upload(client, "b", {"Authorization": b["Authorization"]})
    auth = {"Authorization": a["Authorization"]}
    for body in (
        {"artifact_ids": [other["id"]]},
        {"artifact_ids": ["not-an-id"]},
    ):
        assert client.post(f"{API}/sessions/a/leases", json=body, headers=auth).status_code == 404
    too_long = {"ttl_s": 10**9}
    assert client.post(f"{API}/sessions/a/leases", json=too_long, headers=auth).status_code == 422
    assert client.post(f"{API}/sessions/b/leases", json={}, headers=auth).status_code == 404


def test_a_forced_close_releases_leases(client: TestClient, admin: dict[str, str]) -> None:
    s = session(client, admin, id="f")
    auth = {"Authorization": s["Authorization"]}
    client.post(f"{API}/sessions/f/leases", json={}, headers=auth)
    closed = client.delete(f"{API}/sessions/f", params={"force": True}, headers=auth)
    assert closed.status_code == 200
    assert closed.json()["closed"] is True


def test_retention_over_http_keeps_an_artifact_past_its_expiry(
    client: TestClient, admin: dict[str, str], clock: ManualClock
) -> None:
    s = session(client, admin, id="r", idle_timeout_s=None)
    auth = {"Authorization": s["Authorization"]}
    artifact = upload(client, "r", auth, expires_in_s=10)
    until = (clock.now() + timedelta(seconds=100)).isoformat()
    retained = client.put(
        f"{API}/sessions/r/artifacts/{artifact['id']}/retention",
        json={"retain_until": until},
        headers=auth,
    )
    assert retained.status_code == 200
    clock.advance(50)
    assert client.post(f"{API}/admin/cleanup/expired", headers=admin).json()["deleted_count"] == 0
    clock.advance(60)
    assert client.post(f"{API}/admin/cleanup/expired", headers=admin).json()["deleted_count"] == 1


def test_metrics_count_runs_deletions_and_storage(
    client: TestClient, admin: dict[str, str], clock: ManualClock
) -> None:
    s = session(client, admin, idle_timeout_s=None)
    upload(client, s["id"], {"Authorization": s["Authorization"]}, expires_in_s=5)
    clock.advance(6)
    client.post(f"{API}/admin/cleanup/expired", headers=admin)
    queued = client.post(
        f"{API}/sessions/{s['id']}/tasks",
        json={"processor": "sample-upper"},
        headers={"Authorization": s["Authorization"]},
    )
    assert queued.status_code == 201, queued.text
    text = client.get("/metrics", headers=admin).text
    assert 'ephemera_cleanup_runs_total{dry_run="false",operation="expired"} 1.0' in text
    assert 'ephemera_cleanup_deleted_items_total{dry_run="false",operation="expired"} 1.0' in text
    assert 'ephemera_cleanup_deleted_bytes_total{dry_run="false",operation="expired"} 10.0' in text
    assert 'ephemera_sessions{state="open"} 1.0' in text
    assert 'ephemera_tasks{state="pending"} 1.0' in text
    assert "ephemera_cleanup_duration_seconds_bucket" in text


def test_metrics_take_an_admin_key(client: TestClient, admin: dict[str, str]) -> None:
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    s = session(client, admin)
    with_token = client.get("/metrics", headers={"Authorization": s["Authorization"]})
    assert with_token.status_code == 403
    assert with_token.json()["error"]["code"] == "forbidden"
    answered = client.get("/metrics", headers=admin)
    assert answered.status_code == 200
    assert "ephemera_sessions" in answered.text


def test_public_metrics_need_no_credentials(data_dir: Path) -> None:
    with (
        Store.open(Settings(data_dir=data_dir, metrics_public=True)) as public,
        TestClient(create_app(public)) as client,
    ):
        answered = client.get("/metrics")
        assert answered.status_code == 200
        assert answered.headers["content-type"].startswith("text/plain")
        assert "ephemera_sessions" in answered.text


def test_an_audit_cursor_beyond_64_bits_is_refused_not_a_crash(
    client: TestClient, admin: dict[str, str], admin_store: Store
) -> None:
    # Found by schemathesis: SQLite integers stop at 2**63 - 1.
    response = client.get(f"{API}/admin/audit", params={"cursor": 2**70}, headers=admin)
    assert response.status_code == 422
    with pytest.raises(InvalidInput):
        admin_store.audit_log(before=2**70)


def test_a_burst_of_stats_requests_costs_one_computation(
    client: TestClient,
    admin: dict[str, str],
    admin_store: Store,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    computed: list[bool] = []
    compute = admin_store.cleanup_stats

    def counted(*, include_orphaned: bool = False) -> dict[str, Any]:
        computed.append(include_orphaned)
        return compute(include_orphaned=include_orphaned)

    monkeypatch.setattr(admin_store, "cleanup_stats", counted)

    def stats(**params: Any) -> Any:
        response = client.get(f"{API}/admin/cleanup/stats", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return response.json()

    # More requests than the per-minute limit (5): answers from the cache cost nothing.
    first = [stats() for _ in range(8)]
    assert computed == [False]
    assert all(answer == first[0] for answer in first)
    stats(include_orphaned=True)
    assert computed == [False, True]

    session(client, admin, id="new")  # a change, seen once the second is over
    assert stats()["sessions"] == {}
    clock.advance(1)
    assert stats()["sessions"] == {"open": 1}
    assert computed == [False, True, False]

    # A cleanup run through these routes shows at once.
    client.post(f"{API}/admin/cleanup/session/new", headers=admin)
    assert stats()["sessions"] == {}
    assert computed == [False, True, False, False]


def test_stats_computations_are_rate_limited_per_key(
    client: TestClient, admin: dict[str, str], clock: ManualClock
) -> None:
    statuses = []
    for _ in range(6):
        statuses.append(client.get(f"{API}/admin/cleanup/stats", headers=admin).status_code)
        clock.advance(1)
    assert statuses == [200] * 5 + [429]
    # Cleanup requests keep their own budget.
    assert client.post(f"{API}/admin/cleanup/quota", headers=admin).status_code == 200


def one_then_more_while_it_computes(
    shared: SharedStats, computing: threading.Event, more: int
) -> list[dict[str, Any]]:
    """One caller starts a computation; ``more`` callers arrive while it runs. Their answers."""
    answers: list[dict[str, Any]] = []
    first = threading.Thread(target=lambda: answers.append(shared.get(False, lambda: None)))
    first.start()
    computing.wait(5)
    others = [
        threading.Thread(target=lambda: answers.append(shared.get(False, lambda: None)))
        for _ in range(more)
    ]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join()
    return answers


def test_stats_callers_arriving_during_a_computation_share_it() -> None:
    computing = threading.Event()
    computed: list[bool] = []

    def slow(include_orphaned: bool) -> dict[str, Any]:
        computed.append(include_orphaned)
        computing.set()
        time.sleep(0.2)
        return {"n": len(computed)}

    shared = SharedStats(slow, ManualClock(), ttl_s=1.0)
    answers = one_then_more_while_it_computes(shared, computing, more=4)
    assert computed == [False]
    assert answers == [{"n": 1}] * 5


def test_a_computation_longer_than_the_interval_is_still_shared_with_who_waited() -> None:
    clock = ManualClock()
    computing = threading.Event()
    computed: list[bool] = []

    def slower_than_the_interval(include_orphaned: bool) -> dict[str, Any]:
        computed.append(include_orphaned)
        computing.set()
        time.sleep(0.2)  # the others arrive (and read the clock) meanwhile
        clock.advance(2)  # the computation outlasts the one-second interval
        return {"n": len(computed)}

    shared = SharedStats(slower_than_the_interval, clock, ttl_s=1.0)
    answers = one_then_more_while_it_computes(shared, computing, more=3)
    assert computed == [False]
    assert answers == [{"n": 1}] * 4
    # Who comes after it finished, more than the interval after it began, gets a new one.
    clock.advance(0.1)
    assert shared.get(False, lambda: None) == {"n": 2}
