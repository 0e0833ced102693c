"""PATCH /sessions/{sid}: label, metadata and timeouts change; the deadline follows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.http import create_app
from ephemera.models import KeyRole
from ephemera.testing import ManualClock
from tests.conftest import bearer, database_dump
from tests.databases import PostgresDatabases

API = "/api/v1"


@pytest.fixture
def store(data_dir: Path, clock: ManualClock) -> Iterator[Store]:
    with Store.open(Settings(data_dir=data_dir), clock=clock) as opened:
        yield opened


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


@pytest.fixture
def admin(store: Store) -> dict[str, str]:
    return bearer(store.create_key("ops"))


@pytest.fixture
def token(client: TestClient, admin: dict[str, str]) -> dict[str, str]:
    body = {"id": "s1", "label": "first", "metadata": {"line": 1}, "idle_timeout_s": 600}
    created = client.post(f"{API}/sessions", json=body, headers=admin)
    assert created.status_code == 201
    return bearer(created.json()["token"])


def patch(
    client: TestClient, headers: dict[str, str], body: Any, sid: str = "s1"
) -> httpx.Response:
    return client.patch(f"{API}/sessions/{sid}", json=body, headers=headers)


def test_patch_changes_only_the_fields_sent(
    client: TestClient, token: dict[str, str], clock: ManualClock
) -> None:
    response = patch(client, token, {"label": "second"})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "second"
    assert response.json()["metadata"] == {"line": 1}
    assert response.json()["idle_timeout_s"] == 600
    assert client.get(f"{API}/sessions/s1", headers=token).json()["label"] == "second"


def test_patch_replaces_the_metadata_whole(client: TestClient, token: dict[str, str]) -> None:
    response = patch(client, token, {"metadata": {"camera": "left"}})
    assert response.json()["metadata"] == {"camera": "left"}


def test_null_clears_the_label(client: TestClient, token: dict[str, str]) -> None:
    assert patch(client, token, {"label": None}).json()["label"] is None


def test_new_timeouts_recompute_the_deadline(
    client: TestClient, token: dict[str, str], admin: dict[str, str], clock: ManualClock
) -> None:
    clock.advance(100)
    longer = patch(client, token, {"idle_timeout_s": 7200}).json()
    assert longer["idle_timeout_s"] == 7200
    assert longer["expires_at"] == (clock.now() + timedelta(seconds=7200)).isoformat().replace(
        "+00:00", "Z"
    )
    created = clock.now() - timedelta(seconds=100)
    capped = patch(client, token, {"max_age_s": 1000}).json()
    assert capped["expires_at"] == (created + timedelta(seconds=1000)).isoformat().replace(
        "+00:00", "Z"
    )
    never = patch(client, admin, {"idle_timeout_s": None, "max_age_s": None}).json()
    assert never["expires_at"] is None
    clock.advance(10 * 86400)
    assert client.get(f"{API}/sessions/s1", headers=token).status_code == 200


def test_a_shortened_idle_timeout_lets_the_session_expire(
    client: TestClient, token: dict[str, str], clock: ManualClock
) -> None:
    assert patch(client, token, {"idle_timeout_s": 5}).status_code == 200
    clock.advance(5)
    assert client.get(f"{API}/sessions/s1", headers=token).status_code == 404


def test_a_max_age_already_outlived_is_refused_and_changes_nothing(
    client: TestClient, store: Store, token: dict[str, str], clock: ManualClock
) -> None:
    clock.advance(120)
    client.get(f"{API}/sessions/s1", headers=token)  # the activity any request records
    before = database_dump(store)
    response = patch(client, token, {"max_age_s": 60, "label": "late"})
    assert response.status_code == 422
    assert "already passed" in response.json()["error"]["message"]
    assert database_dump(store) == before


HOSTILE_PATCHES: dict[str, Any] = {
    "label-too-long": {"label": "l" * 201},
    "label-not-text": {"label": 5},
    "idle-zero": {"idle_timeout_s": 0},
    "idle-negative": {"idle_timeout_s": -1},
    "idle-beyond-ten-years": {"idle_timeout_s": 315_360_001},
    "max-age-beyond-ten-years": {"max_age_s": 10**12},
    "max-age-not-a-number": {"max_age_s": "soon"},
    "metadata-not-an-object": {"metadata": [1, 2]},
    "metadata-null": {"metadata": None},
    "metadata-too-big": {"metadata": {"x": "y" * 70_000}},
    "metadata-too-deep": {"metadata": {"a": json.loads("[" * 32 + "]" * 32)}},
    "unknown-field": {"token": "mine"},
    "state-is-not-settable": {"state": "closing"},
    "not-an-object": [1],
}


@pytest.mark.parametrize("name", list(HOSTILE_PATCHES))
def test_bad_patches_are_refused_and_change_nothing(
    client: TestClient, store: Store, token: dict[str, str], name: str
) -> None:
    before = database_dump(store)
    response = patch(client, token, HOSTILE_PATCHES[name])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert database_dump(store) == before


def test_malformed_json_is_refused_and_changes_nothing(
    client: TestClient, store: Store, token: dict[str, str]
) -> None:
    before = database_dump(store)
    response = client.patch(
        f"{API}/sessions/s1",
        content=b'{"label": ',
        headers={**token, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert database_dump(store) == before


def test_a_wrong_token_is_a_missing_session(
    client: TestClient, store: Store, token: dict[str, str]
) -> None:
    before = database_dump(store)
    wrong = patch(client, bearer("eps_wrong"), {"label": "x"})
    missing = patch(client, token, {"label": "x"}, sid="s2")
    assert wrong.status_code == missing.status_code == 404
    assert wrong.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert database_dump(store) == before


def test_keys_other_than_admin_cannot_patch(
    client: TestClient, store: Store, token: dict[str, str]
) -> None:
    before = database_dump(store)
    for role in (KeyRole.CLIENT, KeyRole.WORKER):
        key = bearer(store.create_key(f"k-{role}", role))
        assert patch(client, key, {"label": "x"}).status_code == 403
    assert patch(client, {}, {"label": "x"}).status_code == 401
    assert database_dump(store).count("'x'") == before.count("'x'")
    assert client.get(f"{API}/sessions/s1", headers=token).json()["label"] == "first"


def test_an_expired_session_cannot_be_revived(
    client: TestClient, token: dict[str, str], admin: dict[str, str], clock: ManualClock
) -> None:
    clock.advance(600)
    assert patch(client, token, {"idle_timeout_s": 3600}).status_code == 404
    assert patch(client, admin, {"idle_timeout_s": 3600}).status_code == 404


def test_an_admin_patch_is_audited_with_both_deadlines(
    client: TestClient, store: Store, admin: dict[str, str], token: dict[str, str]
) -> None:
    old = client.get(f"{API}/sessions/s1", headers=token).json()["expires_at"]
    patched = patch(client, admin, {"idle_timeout_s": 86400, "label": "kept"}).json()
    entry = store.audit_log().items[0]
    assert entry.action == "session.update"
    assert entry.actor == "admin:ops"
    assert entry.target == "s1"
    assert entry.params["fields"] == ["idle_timeout_s", "label"]
    assert entry.params["old_expires_at"].replace("+00:00", "Z") == old
    assert entry.params["new_expires_at"].replace("+00:00", "Z") == patched["expires_at"]


def test_a_patch_with_the_session_token_is_not_an_admin_action(
    client: TestClient, store: Store, token: dict[str, str]
) -> None:
    assert patch(client, token, {"idle_timeout_s": 86400}).status_code == 200
    assert store.audit_log(action="session.update").items == []


# -- the operator's ceilings: a session token cannot outlast what the operator allows ------------

WEEK = 7 * 86400


@pytest.mark.parametrize(
    "body",
    [
        {"max_age_s": None, "idle_timeout_s": None},
        {"idle_timeout_s": None},
        {"idle_timeout_s": WEEK + 1},
    ],
    ids=["both-never", "idle-never", "idle-beyond-the-ceiling"],
)
def test_a_session_token_cannot_make_its_session_live_forever(
    client: TestClient, store: Store, token: dict[str, str], body: dict[str, Any]
) -> None:
    before = database_dump(store)
    response = patch(client, token, body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert "takes an admin key" in response.json()["error"]["message"]
    assert database_dump(store) == before
    assert client.get(f"{API}/sessions/s1", headers=token).json()["expires_at"] is not None


def test_a_session_token_may_ask_for_up_to_the_idle_ceiling(
    client: TestClient, token: dict[str, str]
) -> None:
    response = patch(client, token, {"idle_timeout_s": WEEK, "max_age_s": None})
    assert response.status_code == 200, response.text
    assert response.json()["idle_timeout_s"] == WEEK  # no max age is configured: null is fine
    assert response.json()["expires_at"] is not None


def test_with_a_configured_max_age_a_session_token_cannot_ask_for_more(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=tmp_path / "aged", max_age_s=86400, max_idle_timeout_s=3600)
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        token = bearer(store.create_session("s1").token)
        before = database_dump(store)
        for body in ({"max_age_s": None}, {"max_age_s": 86401}, {"idle_timeout_s": 3601}):
            response = patch(client, token, body)
            assert response.status_code == 422, (body, response.text)
            assert database_dump(store) == before
        shorter = patch(client, token, {"max_age_s": 3600, "idle_timeout_s": 600})
        assert shorter.status_code == 200, shorter.text
        assert shorter.json()["max_age_s"] == 3600


def test_an_admin_key_keeps_full_control_of_the_timeouts(
    client: TestClient, admin: dict[str, str], token: dict[str, str]
) -> None:
    forever = patch(client, admin, {"max_age_s": None, "idle_timeout_s": None})
    assert forever.status_code == 200, forever.text
    assert forever.json()["expires_at"] is None
    assert patch(client, admin, {"idle_timeout_s": 315_360_000}).status_code == 200
    assert patch(client, admin, {"idle_timeout_s": 315_360_001}).status_code == 422


def test_the_library_refuses_a_change_its_confirmation_refuses(
    store: Store, clock: ManualClock
) -> None:
    store.create_session("s9", label="kept")

    def refuse(_session: object) -> None:
        raise RuntimeError("cannot answer")

    with pytest.raises(RuntimeError):
        store.update_session("s9", label="lost", idle_timeout_s=5, confirm=refuse)
    session = store.get_session("s9")
    assert session.label == "kept"
    assert session.idle_timeout_s == store.settings.idle_timeout_s


def test_update_session_on_postgresql(
    postgres_databases: PostgresDatabases, data_dir: Path
) -> None:
    url = postgres_databases.fresh()
    try:
        clock = ManualClock()
        with Store.open(Settings(database_url=url, data_dir=data_dir), clock=clock) as s:
            created = s.create_session("pg", metadata={"a": 1}, idle_timeout_s=60)
            clock.advance(30)
            before, after = s.update_session("pg", metadata={"b": [1, 2]}, max_age_s=3600)
            assert before.metadata == {"a": 1}
            assert after.metadata == {"b": [1, 2]}
            assert after.expires_at == clock.now() + timedelta(seconds=60)
            assert after.created_at == created.session.created_at
            with pytest.raises(ValueError, match="already passed"):
                s.update_session("pg", max_age_s=10)
            assert s.get_session("pg").max_age_s == 3600
    finally:
        postgres_databases.drop(url)
