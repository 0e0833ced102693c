"""The import routes, in process: each file version once, the body unread when it is known."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.http import create_app
from tests.conftest import WITH_SAMPLES, MakeSettings, bearer, snapshot

API = "/api/v1"
SOURCE = "host:/srv/scans"


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(processors=WITH_SAMPLES, max_upload_bytes=1024)


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


@pytest.fixture
def token(store: Store) -> str:
    return store.create_session("s1").token


def origin(path: str = "a/scan.txt", size: int = 5, mtime_ns: int = 1000) -> dict[str, Any]:
    return {"source": SOURCE, "path": path, "size": size, "mtime_ns": mtime_ns}


def post_import(
    client: TestClient,
    token: str,
    data: bytes,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    session_id: str = "s1",
) -> Any:
    return client.post(
        f"{API}/sessions/{session_id}/imports",
        params=params or origin(),
        content=data,
        headers={**bearer(token), **(headers or {})},
    )


def test_a_first_import_is_201_and_the_same_file_version_again_200_with_its_body_unread(
    client: TestClient, token: str, store: Store
) -> None:
    first = post_import(client, token, b"hello")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["created"] is True
    entry = body["entry"]
    assert entry["origin"] == origin()
    assert entry["artifact_id"] == body["artifact"]["id"]
    assert entry["sha256"] == hashlib.sha256(b"hello").hexdigest() == body["artifact"]["sha256"]
    assert (entry["replaces"], entry["task_id"]) == (None, None)
    assert body["artifact"]["name"] == "scan.txt"  # the path's last segment by default

    # Other bytes with a checksum they do not match: read, they would be refused.
    params = {**origin(), "sha256": hashlib.sha256(b"hello").hexdigest()}
    again = post_import(client, token, b"other bytes", params)
    assert again.status_code == 200, again.text
    assert again.json() == {**body, "created": False}
    assert len(store.list_artifacts("s1").items) == 1

    newer = post_import(client, token, b"hello!", origin(size=6))
    assert newer.status_code == 201
    assert newer.json()["entry"]["replaces"] == entry["artifact_id"]


def test_an_import_whose_artifact_was_deleted_answers_200_without_artifact(
    client: TestClient, token: str
) -> None:
    entry = post_import(client, token, b"hello").json()["entry"]
    deleted = client.delete(
        f"{API}/sessions/s1/artifacts/{entry['artifact_id']}", headers=bearer(token)
    )
    assert deleted.status_code == 200
    again = post_import(client, token, b"hello")
    assert again.status_code == 200
    assert again.json() == {"created": False, "entry": entry, "artifact": None}


def test_the_ledger_lists_in_pages_by_source(client: TestClient, token: str) -> None:
    for i in range(3):
        assert post_import(client, token, b"x", origin(f"f{i}.txt", 1)).status_code == 201
    other = {**origin("f0.txt", 1), "source": "host:/other"}
    assert post_import(client, token, b"x", other).status_code == 201

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"source": SOURCE, "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get(f"{API}/sessions/s1/imports", params=params, headers=bearer(token))
        assert page.status_code == 200, page.text
        assert len(page.json()["items"]) <= 2
        seen += [item["origin"]["path"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ["f0.txt", "f1.txt", "f2.txt"]
    everything = client.get(f"{API}/sessions/s1/imports", headers=bearer(token)).json()
    assert [i["origin"]["source"] for i in everything["items"]] == [SOURCE] * 3 + ["host:/other"]


def test_then_submits_the_follow_up_with_params_from_the_header(
    client: TestClient, token: str, store: Store
) -> None:
    response = post_import(
        client,
        token,
        b"hello",
        {**origin(), "then": "sample-upper"},
        {"Ephemera-Then-Params": json.dumps({"suffix": ".up"})},
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["entry"]["task_id"]
    task = store.get_task("s1", task_id)
    assert (task.processor, task.params) == ("sample-upper", {"suffix": ".up"})
    assert [i.artifact_id for i in task.inputs] == [response.json()["artifact"]["id"]]


def test_the_follow_up_route_submits_one_task_for_an_entry_without_one(
    client: TestClient, token: str, store: Store
) -> None:
    entry = post_import(client, token, b"hello").json()["entry"]
    url = f"{API}/sessions/s1/imports/{entry['artifact_id']}/follow-up"
    body = {"processor": "sample-upper", "params": {"suffix": ".up"}}
    first = client.post(url, json=body, headers=bearer(token))
    assert first.status_code == 200, first.text
    assert first.json()["task_id"] is not None
    second = client.post(url, json=body, headers=bearer(token))
    assert second.json() == first.json()
    assert [t.id for t in store.list_tasks("s1").items] == [first.json()["task_id"]]


def test_a_wrong_token_is_404_and_stores_nothing(
    client: TestClient, token: str, store: Store
) -> None:
    before = snapshot(store)
    response = post_import(client, "wrong-token", b"hello")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    listed = client.get(f"{API}/sessions/s1/imports", headers=bearer("wrong-token"))
    assert listed.status_code == 404
    assert snapshot(store) == before


def test_a_file_over_the_upload_limit_is_413_and_stores_nothing(
    client: TestClient, token: str, store: Store
) -> None:
    before = snapshot(store)
    response = post_import(client, token, b"x" * 2000, origin(size=2000))
    assert response.status_code == 413
    assert snapshot(store) == before


def test_a_checksum_mismatch_answers_like_the_artifact_upload(
    client: TestClient, token: str, store: Store
) -> None:
    before = snapshot(store)
    bad = "f" * 64
    imported = post_import(client, token, b"hello", {**origin(), "sha256": bad})
    uploaded = client.post(
        f"{API}/sessions/s1/artifacts",
        params={"name": "a", "sha256": bad},
        content=b"hello",
        headers=bearer(token),
    )
    assert imported.status_code == uploaded.status_code == 400
    assert imported.json()["error"]["code"] == uploaded.json()["error"]["code"]
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("params", "headers", "message"),
    [
        ({**origin(), "path": "../etc/passwd"}, {}, "segment"),
        ({**origin(), "path": "/etc/passwd"}, {}, "relative"),
        ({**origin(), "size": -1}, {}, "size"),
        ({k: v for k, v in origin().items() if k != "mtime_ns"}, {}, "mtime_ns"),
        ({**origin(), "then": "sample-upper"}, {"Ephemera-Then-Params": "{nope"}, "JSON"),
        ({**origin(), "then": "sample-upper"}, {"Ephemera-Then-Params": "[1]"}, "JSON object"),
        ({**origin(), "then": "sample-upper"}, {"Ephemera-Then-Params": '{"suffix": 5}'}, "suffix"),
        ({**origin(), "then": "no-such"}, {}, "not enabled"),
        (origin(), {"Ephemera-Then-Params": "{}"}, "then"),
    ],
)
def test_bad_parameters_are_422_and_store_nothing(
    client: TestClient,
    token: str,
    store: Store,
    params: dict[str, Any],
    headers: dict[str, str],
    message: str,
) -> None:
    before = snapshot(store)
    response = post_import(client, token, b"hello", params, headers)
    assert response.status_code == 422, response.text
    assert message in response.text
    assert snapshot(store) == before
