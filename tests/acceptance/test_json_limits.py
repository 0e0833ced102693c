"""Hostile JSON: depth bombs, values that cannot be rendered back, and what is committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.errors import InvalidInput
from ephemera.http import create_app
from ephemera.http.jsonbody import MAX_JSON_BODY_BYTES, nesting_exceeds
from ephemera.jsonvalues import MAX_DEPTH, check_json
from tests.conftest import Server, bearer, database_dump, snapshot

API = "/api/v1"
DEPTHS = [100, 500, 990, 100_000]
JSON = {"content-type": "application/json"}


def nested(depth: int, inner: str = "") -> bytes:
    """Arrays ``depth`` deep, as text (Python could not even build the value)."""
    return ("[" * depth + inner + "]" * depth).encode()


def arrays(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def metadata_body(depth: int) -> bytes:
    return b'{"label": "deep", "metadata": {"a": ' + nested(depth - 1) + b"}}"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    # An authenticated request may record the session's activity once the write interval
    # has passed (a loaded machine takes that long): not a change the refused body made.
    settings = Settings(
        data_dir=data_dir, external_processors=["outside"], activity_write_interval_s=3600
    )
    with Store.open(settings) as opened:
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
    created = client.post(
        f"{API}/sessions", json={"id": "s1", "metadata": {"ok": 1}}, headers=admin
    )
    return bearer(created.json()["token"])


def assert_clean_refusal(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("depth", DEPTHS)
def test_deep_metadata_on_create_is_refused_before_anything_is_written(
    client: TestClient, store: Store, admin: dict[str, str], depth: int
) -> None:
    assert client.get(f"{API}/admin/sessions", headers=admin).status_code == 200  # key use
    before = database_dump(store)
    response = client.post(
        f"{API}/sessions", content=metadata_body(depth), headers={**admin, **JSON}
    )
    assert response.status_code == 422, response.text
    assert "nested deeper" in response.json()["error"]["message"]
    assert database_dump(store) == before
    assert client.get(f"{API}/admin/sessions", headers=admin).status_code == 200


@pytest.mark.parametrize("depth", DEPTHS)
def test_deep_metadata_on_patch_is_refused_and_changes_nothing(
    client: TestClient, store: Store, admin: dict[str, str], token: dict[str, str], depth: int
) -> None:
    before = database_dump(store)
    response = client.patch(
        f"{API}/sessions/s1", content=metadata_body(depth), headers={**token, **JSON}
    )
    assert response.status_code == 422, response.text
    assert database_dump(store) == before
    assert client.get(f"{API}/sessions/s1", headers=token).json()["metadata"] == {"ok": 1}
    assert client.get(f"{API}/admin/sessions", headers=admin).status_code == 200


def test_metadata_may_nest_32_levels_but_not_33(
    client: TestClient, store: Store, admin: dict[str, str]
) -> None:
    # The metadata object is the first level.
    deepest = b'{"metadata": {"a": ' + nested(MAX_DEPTH - 1) + b"}}"
    assert (
        client.post(f"{API}/sessions", content=deepest, headers={**admin, **JSON}).status_code
        == 201
    )
    before = database_dump(store)
    deeper = b'{"metadata": {"a": ' + nested(MAX_DEPTH) + b"}}"
    response = client.post(f"{API}/sessions", content=deeper, headers={**admin, **JSON})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        f"metadata must not be nested deeper than {MAX_DEPTH} levels"
    )
    assert database_dump(store) == before


UNRENDERABLE = {
    "nan": b'{"metadata": {"a": NaN}}',
    "infinity": b'{"metadata": {"a": -Infinity}}',
    "overflowing-float": b'{"metadata": {"a": 1e999}}',
    "lone-surrogate-value": b'{"metadata": {"a": "\\ud800"}}',
    "lone-surrogate-key": b'{"metadata": {"\\udfff": 1}}',
}


@pytest.mark.parametrize("name", list(UNRENDERABLE))
def test_metadata_that_cannot_be_rendered_back_is_refused(
    client: TestClient, store: Store, admin: dict[str, str], token: dict[str, str], name: str
) -> None:
    before = database_dump(store)
    created = client.post(f"{API}/sessions", content=UNRENDERABLE[name], headers={**admin, **JSON})
    assert created.status_code == 422, created.text
    patched = client.patch(
        f"{API}/sessions/s1", content=UNRENDERABLE[name], headers={**token, **JSON}
    )
    assert patched.status_code == 422, patched.text
    assert database_dump(store) == before
    assert client.get(f"{API}/admin/sessions", headers=admin).status_code == 200


def test_brackets_inside_strings_do_not_count_as_nesting(
    client: TestClient, admin: dict[str, str]
) -> None:
    text = "[" * 500 + '\\"{' * 100
    response = client.post(f"{API}/sessions", json={"metadata": {"text": text}}, headers=admin)
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == {"text": text}


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_task_params_are_refused(
    client: TestClient, store: Store, token: dict[str, str], depth: int
) -> None:
    before = database_dump(store)
    body = b'{"processor": "outside", "params": {"a": ' + nested(depth) + b"}}"
    response = client.post(f"{API}/sessions/s1/tasks", content=body, headers={**token, **JSON})
    assert_clean_refusal(response)
    assert database_dump(store) == before


def test_task_params_the_json_body_guard_lets_through_are_still_limited(
    client: TestClient, store: Store, token: dict[str, str]
) -> None:
    before = database_dump(store)
    body = {
        "processor": "outside",
        "params": {"a": arrays(MAX_DEPTH)},  # 33 levels with params
    }
    response = client.post(f"{API}/sessions/s1/tasks", json=body, headers=token)
    assert response.status_code == 422
    assert "params must not be nested deeper" in response.json()["error"]["message"]
    assert database_dump(store) == before


def test_a_deep_task_result_is_refused_and_the_claim_still_holds(
    client: TestClient, store: Store, admin: dict[str, str], token: dict[str, str]
) -> None:
    submitted = client.post(
        f"{API}/sessions/s1/tasks", json={"processor": "outside"}, headers=token
    )
    assert submitted.status_code == 201, submitted.text
    claim = client.post(
        f"{API}/worker/claim", json={"worker": "w", "processors": ["outside"]}, headers=admin
    ).json()
    task_id = claim["task"]["id"]
    headers = {**admin, **JSON, "Ephemera-Claim": claim["claim_id"]}
    for body in (b'{"result": {"a": ' + nested(100_000) + b"}}", b'{"result": {"a": NaN}}'):
        before = database_dump(store)
        refused = client.post(
            f"{API}/worker/tasks/{task_id}/complete", content=body, headers=headers
        )
        assert_clean_refusal(refused)
        assert database_dump(store) == before
    done = client.post(
        f"{API}/worker/tasks/{task_id}/complete", json={"result": {"ok": True}}, headers=headers
    )
    assert done.json()["state"] == "succeeded"


def test_a_session_whose_answer_cannot_be_built_is_not_created(store: Store) -> None:
    def refuse(_created: object) -> None:
        raise RuntimeError("cannot answer")

    with pytest.raises(RuntimeError):
        store.create_session("s9", confirm=refuse)
    assert store.catalog.get_session_row("s9") is None


# -- the library's own check ----------------------------------------------------------------------


def test_check_json_survives_depths_python_cannot_recurse_into() -> None:
    with pytest.raises(InvalidInput, match="nested deeper than 32"):
        check_json({"a": arrays(100_000)}, "metadata", max_bytes=1 << 20)


def test_check_json_refuses_a_value_that_contains_itself() -> None:
    value: dict[str, Any] = {}
    value["self"] = value
    with pytest.raises(InvalidInput, match="nested deeper"):
        check_json(value, "metadata", max_bytes=1 << 20)


def test_check_json_returns_a_plain_copy() -> None:
    value = {"t": (1, 2), "n": None, "f": 1.5}
    assert check_json(value, "metadata", max_bytes=100) == {"t": [1, 2], "n": None, "f": 1.5}
    with pytest.raises(InvalidInput, match="at most 5 bytes"):
        check_json(value, "metadata", max_bytes=5)
    with pytest.raises(InvalidInput, match="plain JSON"):
        check_json({"x": object()}, "metadata", max_bytes=100)


def test_the_store_refuses_hostile_metadata_itself(store: Store) -> None:
    for hostile in (
        {"a": float("nan")},
        {"a": "\ud800"},
        {"a": arrays(MAX_DEPTH)},
    ):
        with pytest.raises(InvalidInput):
            store.create_session(metadata=hostile)
    assert store.list_sessions().items == []


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        (b"[]", False),
        (b"[[]]", False),
        (b"[[[]]]", True),
        (b'{"a": {"b": 1}}', False),
        (b'{"a": {"b": [1]}}', True),
        (b'["[[[[", "]]]]"]', False),
        (b'["\\"[[[[\\"", 1]', False),
        (b"[[", False),  # unbalanced: the parser reports it as malformed
        (b"[}", False),
    ],
)
def test_nesting_scan(text: bytes, deeper: bool) -> None:
    assert nesting_exceeds(text, 2) is deeper


# -- the size of a body, before any authentication --------------------------------------------


def oversized_session_body() -> bytes:
    """Valid JSON just above the cap, the bulk in a label no one would ever keep."""
    padding = MAX_JSON_BODY_BYTES - len(b'{"label": ""}') + 1
    return b'{"label": "' + b"x" * padding + b'"}'


@pytest.mark.parametrize("credentials", ["none", "admin"])
def test_a_body_above_the_cap_is_413_by_its_content_length(
    client: TestClient, store: Store, admin: dict[str, str], credentials: str
) -> None:
    headers = admin if credentials == "admin" else {}
    before = snapshot(store)
    response = client.post(
        f"{API}/sessions", content=oversized_session_body(), headers={**headers, **JSON}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert str(MAX_JSON_BODY_BYTES) in response.json()["error"]["message"]
    assert snapshot(store) == before


def test_a_body_without_content_length_is_cut_off_at_the_cap(
    client: TestClient, store: Store, token: dict[str, str]
) -> None:
    body = oversized_session_body()

    def chunked() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they come
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    before = snapshot(store)
    response = client.patch(f"{API}/sessions/s1", content=chunked(), headers={**token, **JSON})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert snapshot(store) == before
    assert client.get(f"{API}/sessions/s1", headers=token).json()["label"] is None


def test_a_body_of_exactly_the_cap_is_accepted(client: TestClient, token: dict[str, str]) -> None:
    padded = b'{"label": "kept"}' + b" " * (MAX_JSON_BODY_BYTES - 17)
    response = client.patch(f"{API}/sessions/s1", content=padded, headers={**token, **JSON})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "kept"


# -- over a real server ---------------------------------------------------------------------------


@pytest.mark.slow
def test_depth_bombs_over_a_real_server(server: Server) -> None:
    with httpx.Client(base_url=server.api, timeout=30) as http:
        created = http.post("/sessions", json={"id": "s1"}, headers=server.admin())
        token = bearer(created.json()["token"])
        for depth in DEPTHS:
            body = metadata_body(depth)
            create = http.post("/sessions", content=body, headers={**server.admin(), **JSON})
            assert create.status_code == 422, (depth, create.text)
            change = http.patch("/sessions/s1", content=body, headers={**token, **JSON})
            assert change.status_code == 422, (depth, change.text)
            listed = http.get("/admin/sessions", headers=server.admin())
            assert listed.status_code == 200
            assert [s["id"] for s in listed.json()["items"]] == ["s1"]
            assert listed.json()["items"][0]["metadata"] == {}
    assert "Traceback" not in server.log.read_text()
