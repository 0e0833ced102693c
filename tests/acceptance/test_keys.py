"""Key roles, expiry and last use; anonymous creation; limits on failed authentication."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.errors import Unauthenticated
from ephemera.http import create_app
from ephemera.models import KeyRole
from ephemera.testing import ManualClock
from tests.conftest import Server, bearer, seed_from_template, snapshot

API = "/api/v1"
CLAIM = {"Ephemera-Claim": "guess"}
CLAIM_BODY = {"worker": "w", "processors": ["sample-upper"]}
TASK = "01a1fd3f-147d-75e5-bd31-fe6998c9f3b0"
ARTIFACT = "01a1fd3f-147d-75e5-bd31-fe6998c9f3b1"
LEASE = "01a1fd3f-147d-75e5-bd31-fe6998c9f3b2"

# Routes that take no credentials at all: they describe the API and hold nothing of a session,
# or, for a download link, the link is the credential.
PUBLIC_ROUTES = {
    ("GET", "/processors"),
    ("GET", "/processors/{name}"),
    ("GET", "/links/{session_id}/{artifact_id}"),
}

# Every other route but session creation, with a request valid apart from its credentials.
OTHER_ROUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/sessions/{session_id}"): {},
    ("PATCH", "/sessions/{session_id}"): {"json": {"label": "mine"}},
    ("DELETE", "/sessions/{session_id}"): {},
    ("POST", "/sessions/{session_id}/artifacts"): {"params": {"name": "a"}, "content": b"x"},
    ("GET", "/sessions/{session_id}/artifacts"): {},
    ("GET", "/sessions/{session_id}/artifacts/{artifact_id}"): {},
    ("DELETE", "/sessions/{session_id}/artifacts/{artifact_id}"): {},
    ("GET", "/sessions/{session_id}/artifacts/{artifact_id}/content"): {},
    ("PUT", "/sessions/{session_id}/artifacts/{artifact_id}/retention"): {
        "json": {"retain_until": None}
    },
    ("POST", "/sessions/{session_id}/artifacts/{artifact_id}/links"): {
        "json": {"expires_in_s": 60}
    },
    ("POST", "/sessions/{session_id}/imports"): {
        "params": {"source": "host:/in", "path": "a.txt", "size": 1, "mtime_ns": 1},
        "content": b"x",
    },
    ("GET", "/sessions/{session_id}/imports"): {},
    ("POST", "/sessions/{session_id}/imports/{artifact_id}/follow-up"): {
        "json": {"processor": "sample-upper"}
    },
    ("POST", "/sessions/{session_id}/leases"): {"json": {}},
    ("GET", "/sessions/{session_id}/leases"): {},
    ("GET", "/sessions/{session_id}/leases/{lease_id}"): {},
    ("DELETE", "/sessions/{session_id}/leases/{lease_id}"): {},
    ("POST", "/sessions/{session_id}/leases/{lease_id}/renew"): {"json": {}},
    ("POST", "/sessions/{session_id}/tasks"): {"json": {"processor": "sample-upper"}},
    ("GET", "/sessions/{session_id}/tasks"): {},
    ("GET", "/sessions/{session_id}/tasks/{task_id}"): {},
    ("POST", "/sessions/{session_id}/tasks/{task_id}/cancel"): {},
    ("GET", "/sessions/{session_id}/events"): {},
    ("POST", "/admin/cleanup/session/{session_id}"): {},
    ("POST", "/admin/cleanup/{operation}"): {},
    ("GET", "/admin/cleanup/stats"): {},
    ("GET", "/admin/audit"): {},
    ("GET", "/admin/sessions"): {},
    ("POST", "/admin/verify"): {},
    ("POST", "/admin/link-keys"): {},
    ("GET", "/admin/link-keys"): {},
    ("DELETE", "/admin/link-keys/{key_id}"): {},
    ("POST", "/worker/claim"): {"json": CLAIM_BODY},
    ("POST", "/worker/tasks/{task_id}/heartbeat"): {"json": {}},
    ("GET", "/worker/tasks/{task_id}/inputs/{artifact_id}/content"): {},
    ("POST", "/worker/tasks/{task_id}/outputs"): {"params": {"name": "o"}, "content": b"x"},
    ("POST", "/worker/tasks/{task_id}/complete"): {"json": {}},
    ("POST", "/worker/tasks/{task_id}/fail"): {"json": {"error": "broken"}},
}


MakeStore = Callable[..., Store]


@pytest.fixture
def make_store(data_dir: Path, clock: ManualClock, migrated_sqlite: Path) -> Iterator[MakeStore]:
    opened: list[Store] = []

    def make(**overrides: Any) -> Store:
        settings = Settings(data_dir=data_dir, **overrides)
        seed_from_template(settings, migrated_sqlite)
        store = Store.open(settings, clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


def create(client: TestClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return client.post(f"{API}/sessions", json=body, headers=headers)


def call(
    client: TestClient, route: tuple[str, str], sid: str, headers: dict[str, str]
) -> httpx.Response:
    method, template = route
    path = template.format(
        session_id=sid,
        artifact_id=ARTIFACT,
        lease_id=LEASE,
        task_id=TASK,
        operation="all",
        key_id="k",
    )
    return client.request(method, API + path, headers={**headers, **CLAIM}, **OTHER_ROUTES[route])


# -- roles ----------------------------------------------------------------------------------------


def test_the_route_table_covers_every_route(client: TestClient) -> None:
    routes = {
        (method.upper(), path.removeprefix(API))
        for path, operations in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in operations
        if path.startswith(API)
    }
    assert routes - {("POST", "/sessions")} - PUBLIC_ROUTES == set(OTHER_ROUTES)


@pytest.mark.parametrize("path", ["/processors", "/processors/roi-compare"])
def test_a_client_key_gets_no_more_from_public_routes_than_anyone(
    client: TestClient, store: Store, path: str
) -> None:
    key = bearer(store.create_key("kiosk", KeyRole.CLIENT))
    with_key = client.get(API + path, headers=key)
    assert with_key.status_code == 200
    assert with_key.json() == client.get(API + path).json()


def test_a_client_key_creates_a_session_whose_token_opens_it(
    client: TestClient, store: Store
) -> None:
    key = bearer(store.create_key("kiosk", KeyRole.CLIENT))
    assert key["Authorization"].startswith("Bearer epc_")
    created = create(client, key, id="station-1", label="line 1")
    assert created.status_code == 201, created.text
    token = bearer(created.json()["token"])
    assert client.get(f"{API}/sessions/station-1", headers=token).json()["label"] == "line 1"


@pytest.mark.parametrize("route", list(OTHER_ROUTES), ids="{0[0]} {0[1]}".format)
def test_a_client_key_can_do_nothing_but_create(
    client: TestClient, store: Store, route: tuple[str, str]
) -> None:
    key = bearer(store.create_key("kiosk", KeyRole.CLIENT))
    sid = create(client, key).json()["id"]  # even the session it created itself
    before = snapshot(store)
    response = call(client, route, sid, key)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    assert snapshot(store) == before


def test_an_admin_key_still_creates_and_opens_sessions(client: TestClient, store: Store) -> None:
    admin = bearer(store.create_key("ops"))
    created = create(client, admin, id="s1")
    assert created.status_code == 201
    assert client.get(f"{API}/sessions/s1", headers=admin).status_code == 200
    assert client.get(f"{API}/admin/sessions", headers=admin).status_code == 200
    assert [e.action for e in store.audit_log().items] == ["session.create"]


def test_a_worker_key_cannot_create_or_open_sessions(client: TestClient, store: Store) -> None:
    admin = bearer(store.create_key("ops"))
    sid = create(client, admin).json()["id"]
    worker = bearer(store.create_key("w1", KeyRole.WORKER))
    before = snapshot(store)
    assert create(client, worker).status_code == 403
    assert client.get(f"{API}/sessions/{sid}", headers=worker).status_code == 403
    assert snapshot(store) == before


def test_metrics_take_an_admin_key_and_refuse_unknown_ones(
    client: TestClient, store: Store
) -> None:
    kiosk = bearer(store.create_key("kiosk", KeyRole.CLIENT))
    assert client.get("/metrics", headers=kiosk).status_code == 403
    forged = client.get("/metrics", headers=bearer("epa_forged"))
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "unauthenticated"


# -- revoked, expired, unknown ------------------------------------------------------------------


def test_a_revoked_key_answers_401_everywhere(client: TestClient, store: Store) -> None:
    admin = bearer(store.create_key("ops"))
    doomed = bearer(store.create_key("doomed"))
    sid = create(client, admin).json()["id"]
    assert client.get(f"{API}/sessions/{sid}", headers=doomed).status_code == 200
    store.revoke_key("doomed")
    for response in (
        client.get(f"{API}/sessions/{sid}", headers=doomed),  # not a 404 "wrong token"
        create(client, doomed),
        client.get(f"{API}/admin/sessions", headers=doomed),
        client.post(f"{API}/worker/claim", json=CLAIM_BODY, headers=doomed),
    ):
        assert response.status_code == 401, response.text
        assert response.json()["error"] == {
            "code": "unauthenticated",
            "message": "unknown or revoked key",
        }
        assert response.headers["www-authenticate"] == "Bearer"


def test_an_expired_key_answers_401_and_says_so(
    client: TestClient, store: Store, clock: ManualClock
) -> None:
    admin = bearer(store.create_key("ops"))
    sid = create(client, admin).json()["id"]
    short = bearer(store.create_key("short", KeyRole.ADMIN, expires_in_s=3600))
    client_key = bearer(store.create_key("kiosk", KeyRole.CLIENT, expires_in_s=3600))
    assert client.get(f"{API}/sessions/{sid}", headers=short).status_code == 200
    clock.advance(3600)
    before = snapshot(store)
    for response in (
        client.get(f"{API}/sessions/{sid}", headers=short),
        client.get(f"{API}/admin/audit", headers=short),
        create(client, client_key),
    ):
        assert response.status_code == 401, response.text
        assert "expired at" in response.json()["error"]["message"]
    assert snapshot(store) == before


def test_a_never_issued_key_is_401_whether_or_not_the_session_exists(
    client: TestClient, store: Store
) -> None:
    admin = bearer(store.create_key("ops"))
    sid = create(client, admin).json()["id"]
    forged = bearer("epa_" + "A" * 43)
    existing = client.get(f"{API}/sessions/{sid}", headers=forged)
    missing = client.get(f"{API}/sessions/no-such-session", headers=forged)
    assert existing.status_code == missing.status_code == 401
    assert existing.json() == missing.json()


def test_a_wrong_session_token_is_still_indistinguishable_from_a_missing_session(
    client: TestClient, store: Store
) -> None:
    admin = bearer(store.create_key("ops"))
    create(client, admin, id="s1")
    wrong = client.get(f"{API}/sessions/s1", headers=bearer("eps_wrong"))
    missing = client.get(f"{API}/sessions/s2", headers=bearer("eps_wrong"))
    assert wrong.status_code == missing.status_code == 404
    assert wrong.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"


def test_key_expiry_is_checked_when_created(store: Store) -> None:
    for bad in (0, -5, 11 * 365 * 86400):
        with pytest.raises(ValueError, match="expiry"):
            store.create_key("k", KeyRole.CLIENT, expires_in_s=bad)
    assert store.list_keys(KeyRole.CLIENT) == []
    with pytest.raises(ValueError, match="role"):
        store.create_key("k", "superuser")


def test_last_use_is_recorded_but_not_on_every_request(store: Store, clock: ManualClock) -> None:
    key = store.create_key("kiosk", KeyRole.CLIENT)
    assert store.list_keys(KeyRole.CLIENT)[0].last_used_at is None
    first = clock.now()
    store.resolve_key(key)
    assert store.list_keys(KeyRole.CLIENT)[0].last_used_at == first
    clock.advance(store.settings.activity_write_interval_s / 2)
    store.resolve_key(key)
    assert store.list_keys(KeyRole.CLIENT)[0].last_used_at == first
    clock.advance(store.settings.activity_write_interval_s)
    store.resolve_key(key)
    assert store.list_keys(KeyRole.CLIENT)[0].last_used_at == clock.now()


def test_a_failed_key_records_no_use(store: Store, clock: ManualClock) -> None:
    key = store.create_key("short", KeyRole.ADMIN, expires_in_s=10)
    clock.advance(10)
    with pytest.raises(Unauthenticated):
        store.resolve_key(key)
    assert store.list_keys()[0].last_used_at is None


# -- anonymous creation -------------------------------------------------------------------------


def test_anonymous_creation_is_off_by_default(client: TestClient, store: Store) -> None:
    before = snapshot(store)
    response = create(client, {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert snapshot(store) == before


def test_anonymous_creation_when_on_is_rate_limited_per_address(make_store: MakeStore) -> None:
    store = make_store(anonymous_sessions=True, anonymous_sessions_per_minute=3)
    with TestClient(create_app(store), client=("10.0.0.1", 1000)) as first:
        tokens = []
        for _ in range(3):
            response = create(first, {})
            assert response.status_code == 201, response.text
            tokens.append((response.json()["id"], response.json()["token"]))
        before = snapshot(store)
        refused = create(first, {})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert snapshot(store) == before
        sid, token = tokens[0]
        assert first.get(f"{API}/sessions/{sid}", headers=bearer(token)).status_code == 200
        assert first.get(f"{API}/admin/sessions").status_code == 401  # anonymous is no more
    with TestClient(create_app(store), client=("10.0.0.2", 1000)) as second:
        assert create(second, {}).status_code == 201


# -- what creators may ask for, and the record of who created what ------------------------------

FOREVER = {"idle_timeout_s": None, "max_age_s": None}


def test_a_client_key_cannot_create_a_session_that_never_expires(
    client: TestClient, store: Store
) -> None:
    key = bearer(store.create_key("kiosk", KeyRole.CLIENT))
    before = snapshot(store)
    for body in (FOREVER, {"idle_timeout_s": None}, {"idle_timeout_s": 7 * 86400 + 1}):
        refused = create(client, key, **body)
        assert refused.status_code == 422, (body, refused.text)
        assert "takes an admin key" in refused.json()["error"]["message"]
        assert snapshot(store) == before
    kept = create(client, key, idle_timeout_s=7 * 86400, max_age_s=None)
    assert kept.status_code == 201, kept.text
    assert kept.json()["expires_at"] is not None


def test_anonymous_creation_is_held_to_the_configured_max_age(make_store: MakeStore) -> None:
    store = make_store(anonymous_sessions=True, max_age_s=3600)
    with TestClient(create_app(store)) as client:
        before = snapshot(store)
        for body in (FOREVER, {"max_age_s": None}, {"max_age_s": 3601}):
            assert create(client, {}, **body).status_code == 422, body
            assert snapshot(store) == before
        default = create(client, {})
        assert default.status_code == 201, default.text
        assert default.json()["max_age_s"] == 3600
        assert create(client, {}, max_age_s=60).json()["max_age_s"] == 60


def test_an_admin_key_may_create_a_session_that_never_expires(
    make_store: MakeStore,
) -> None:
    store = make_store(max_age_s=3600, max_idle_timeout_s=60)
    admin = bearer(store.create_key("ops"))
    with TestClient(create_app(store)) as client:
        created = create(client, admin, **FOREVER)
        assert created.status_code == 201, created.text
        assert created.json()["expires_at"] is None


def test_every_session_creation_is_audited_with_its_creator(make_store: MakeStore) -> None:
    store = make_store(anonymous_sessions=True)
    admin = bearer(store.create_key("ops"))
    kiosk = bearer(store.create_key("kiosk", KeyRole.CLIENT))
    with TestClient(create_app(store), client=("10.0.0.7", 1000)) as client:
        for sid, headers in (("by-admin", admin), ("by-kiosk", kiosk), ("by-anyone", {})):
            assert create(client, headers, id=sid, label=sid).status_code == 201
    entries = store.audit_log(action="session.create").items
    assert sorted((e.actor, e.target, e.params["label"]) for e in entries) == [
        ("admin:ops", "by-admin", "by-admin"),
        ("anonymous:10.0.0.7", "by-anyone", "by-anyone"),
        ("client:kiosk", "by-kiosk", "by-kiosk"),
    ]


# -- failed authentication ----------------------------------------------------------------------


def test_a_burst_of_failed_authentications_gets_429_and_one_audit_entry(
    make_store: MakeStore,
) -> None:
    store = make_store(auth_failures_per_minute=5)
    admin = bearer(store.create_key("ops"))
    with TestClient(create_app(store), client=("10.0.0.9", 1000)) as attacker:
        guesses = [bearer(f"epa_guess{i}") for i in range(3)] + [bearer("eps_guess"), {}]
        statuses = [attacker.get(f"{API}/admin/audit", headers=h).status_code for h in guesses]
        assert statuses == [401, 401, 401, 403, 401]  # the session token is a 403 here: valid
        assert attacker.get(f"{API}/sessions/s1", headers=bearer("eps_guess")).status_code == 404
        # Five failures (the 403 was no authentication failure): the address is refused now,
        # even with a valid key, so that a lucky guess would not be told apart.
        for headers in (bearer("epa_more"), admin, {}):
            refused = attacker.get(f"{API}/admin/audit", headers=headers)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
    with TestClient(create_app(store), client=("10.0.0.10", 1000)) as bystander:
        assert bystander.get(f"{API}/admin/audit", headers=admin).status_code == 200
    entries = [e for e in store.audit_log().items if e.action == "auth.throttled"]
    assert [(e.actor, e.target, e.params) for e in entries] == [
        ("http", "10.0.0.9", {"failures": 5, "window_s": 60})
    ]


def test_key_guessing_on_metrics_is_counted_throttled_and_audited(make_store: MakeStore) -> None:
    store = make_store(auth_failures_per_minute=3)
    admin = bearer(store.create_key("ops"))
    with TestClient(create_app(store), client=("10.0.0.11", 1000)) as attacker:
        statuses = [
            attacker.get("/metrics", headers=bearer(f"epa_guess{i}")).status_code for i in range(3)
        ]
        assert statuses == [401, 401, 401]
        for path in ("/metrics", f"{API}/admin/audit"):  # one count for the whole address
            refused = attacker.get(path, headers=admin)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
    with TestClient(create_app(store), client=("10.0.0.12", 1000)) as bystander:
        assert bystander.get("/metrics", headers=admin).status_code == 200
    entries = store.audit_log(action="auth.throttled").items
    assert [(e.actor, e.target) for e in entries] == [("http", "10.0.0.11")]


def test_successful_requests_do_not_count_as_failures(make_store: MakeStore) -> None:
    store = make_store(auth_failures_per_minute=2)
    admin = bearer(store.create_key("ops"))
    with TestClient(create_app(store)) as client:
        for _ in range(10):
            assert client.get(f"{API}/admin/audit", headers=admin).status_code == 200
        assert client.get(f"{API}/admin/audit", headers=bearer("epa_x")).status_code == 401
        assert client.get(f"{API}/admin/audit", headers=admin).status_code == 200


def test_an_admin_key_asking_for_missing_sessions_is_no_failed_authentication(
    make_store: MakeStore,
) -> None:
    store = make_store(auth_failures_per_minute=2)
    admin = bearer(store.create_key("ops"))
    with TestClient(create_app(store)) as client:
        for i in range(5):
            assert client.get(f"{API}/sessions/gone-{i}", headers=admin).status_code == 404
        assert client.get(f"{API}/admin/audit", headers=admin).status_code == 200


@pytest.mark.slow
def test_failed_authentication_bursts_get_429_over_a_real_server(tmp_path: Path) -> None:
    env = {"EPHEMERA_AUTH_FAILURES_PER_MINUTE": "4"}
    server = Server(tmp_path / "data", env=env).start()
    try:
        with httpx.Client(base_url=server.api, timeout=10) as http:
            statuses = [
                http.get("/admin/sessions", headers=bearer(f"epa_guess{i}")).status_code
                for i in range(6)
            ]
            assert statuses == [401, 401, 401, 401, 429, 429]
            refused = http.get("/admin/sessions", headers=server.admin())
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
    finally:
        server.stop()


# -- the command line ---------------------------------------------------------------------------


def ephemera(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ephemera", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_client_key_commands_create_list_and_revoke(data_dir: Path) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    created = ephemera("client-key", "create", "kiosk", "--expires-in", "30d", data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n"
    assert key.startswith("epc_")
    listed = json.loads(ephemera("client-key", "list", "--json", data_dir=data_dir).stdout)
    assert [(k["name"], k["role"], k["last_used_at"]) for k in listed] == [
        ("kiosk", "client", None)
    ]
    with Store.open(Settings(data_dir=data_dir)) as store:
        found = store.resolve_key(key)
        assert found is not None
        assert found.expires_at is not None
        assert found.expires_at - found.created_at == timedelta(days=30)
    table = ephemera("client-key", "list", data_dir=data_dir).stdout
    assert "last used" in table
    assert "expires" in table
    assert "client" in table
    assert ephemera("admin-key", "list", "--json", data_dir=data_dir).stdout.strip() == "[]"

    assert ephemera("client-key", "revoke", "kiosk", data_dir=data_dir).returncode == 0
    with Store.open(Settings(data_dir=data_dir)) as store:
        with pytest.raises(Unauthenticated):
            store.resolve_key(key)
        log = [(e.action, e.target, e.params) for e in store.audit_log().items]
    assert log[::-1][:2] == [
        ("client-key.create", "kiosk", {"expires_in_s": 30 * 86400}),
        ("client-key.revoke", "kiosk", {}),
    ]


@pytest.mark.parametrize("bad", ["30", "d", "0d", "-1h", "1y", "1.5h"])
def test_a_malformed_expiry_creates_no_key(data_dir: Path, bad: str) -> None:
    refused = ephemera("admin-key", "create", "ops", "--expires-in", bad, data_dir=data_dir)
    assert refused.returncode == 2
    assert "--expires-in" in refused.stderr
    assert refused.stdout == ""
    assert not (data_dir / "ephemera.db").exists()
