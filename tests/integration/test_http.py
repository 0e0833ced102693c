"""The HTTP API, in process: credentials, uploads, downloads, errors."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ephemera import Store
from ephemera.http import create_app
from ephemera.testing import ManualClock
from tests.conftest import bearer

CONTRACT = True

API = "/api/v1"


@pytest.fixture
def admin_key(store: Store) -> str:
    return store.create_key("test")


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as test_client:
        yield test_client


def new_session(client: TestClient, admin_key: str, **body: Any) -> tuple[str, str]:
    response = client.post(f"{API}/sessions", json=body, headers=bearer(admin_key))
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["token"]


def error_code(response: Any) -> str:
    return str(response.json()["error"]["code"])


def test_missing_credentials_are_401_with_a_bearer_challenge(client: TestClient) -> None:
    response = client.get(f"{API}/sessions/s1")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error_code(response) == "unauthenticated"


def test_creating_a_session_takes_an_admin_key(client: TestClient, admin_key: str) -> None:
    _, token = new_session(client, admin_key)
    response = client.post(f"{API}/sessions", json={}, headers=bearer(token))
    assert response.status_code == 403
    assert error_code(response) == "forbidden"


def test_create_returns_the_token_once_and_get_never_shows_it(
    client: TestClient, admin_key: str
) -> None:
    sid, token = new_session(
        client, admin_key, id="cam-7", label="camera 7", metadata={"line": 3}, max_age_s=600
    )
    body = client.get(f"{API}/sessions/{sid}", headers=bearer(token)).json()
    assert "token" not in body
    assert (body["id"], body["label"], body["metadata"]) == ("cam-7", "camera 7", {"line": 3})
    assert (body["idle_timeout_s"], body["max_age_s"]) == (3600, 600)
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")


def test_null_idle_timeout_means_never(client: TestClient, admin_key: str) -> None:
    response = client.post(
        f"{API}/sessions", json={"idle_timeout_s": None}, headers=bearer(admin_key)
    )
    assert response.json()["idle_timeout_s"] is None
    assert response.json()["expires_at"] is None


def test_a_live_id_is_409(client: TestClient, admin_key: str) -> None:
    new_session(client, admin_key, id="dup")
    response = client.post(f"{API}/sessions", json={"id": "dup"}, headers=bearer(admin_key))
    assert response.status_code == 409
    assert error_code(response) == "conflict"


def test_a_wrong_token_is_indistinguishable_from_a_missing_session(
    client: TestClient, admin_key: str
) -> None:
    new_session(client, admin_key, id="real")
    _, other_token = new_session(client, admin_key)
    wrong = client.get(f"{API}/sessions/real", headers=bearer(other_token))
    missing = client.get(f"{API}/sessions/nope", headers=bearer(other_token))
    assert wrong.status_code == missing.status_code == 404
    assert wrong.json()["error"]["message"].replace("real", "X") == missing.json()["error"][
        "message"
    ].replace("nope", "X")
    assert set(wrong.headers) == set(missing.headers)


def upload_three_ways(
    client: TestClient, sid: str, token: str, data: bytes
) -> list[dict[str, Any]]:
    raw = client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": "raw.bin", "kind": "golden"},
        content=data,
        headers={**bearer(token), "content-type": "application/octet-stream"},
    )
    multipart = client.post(
        f"{API}/sessions/{sid}/artifacts",
        files={"file": ("form.png", data, "image/png")},
        data={"kind": "input"},
        headers=bearer(token),
    )
    as_json = client.post(
        f"{API}/sessions/{sid}/artifacts",
        json={"name": "b64.bin", "data_base64": base64.b64encode(data).decode()},
        headers=bearer(token),
    )
    for response in (raw, multipart, as_json):
        assert response.status_code == 201, response.text
    return [raw.json(), multipart.json(), as_json.json()]


def test_three_upload_modes_store_the_same_exact_bytes(client: TestClient, admin_key: str) -> None:
    sid, token = new_session(client, admin_key)
    data = bytes(range(256)) * 5000
    raw, multipart, as_json = upload_three_ways(client, sid, token, data)
    digest = hashlib.sha256(data).hexdigest()
    assert raw["sha256"] == multipart["sha256"] == as_json["sha256"] == digest
    assert (raw["kind"], raw["content_type"]) == ("golden", "application/octet-stream")
    assert (multipart["name"], multipart["content_type"]) == ("form.png", "image/png")
    for artifact in (raw, multipart, as_json):
        content = client.get(
            f"{API}/sessions/{sid}/artifacts/{artifact['id']}/content", headers=bearer(token)
        )
        assert content.content == data


def test_multipart_fields_may_follow_the_file(client: TestClient, admin_key: str) -> None:
    sid, token = new_session(client, admin_key)
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nhello\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\nresult\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nrenamed.txt\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    response = client.post(
        f"{API}/sessions/{sid}/artifacts",
        content=body,
        headers={**bearer(token), "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert (response.json()["name"], response.json()["kind"]) == ("renamed.txt", "result")
    assert response.json()["size"] == 5


def test_a_client_checksum_is_verified(client: TestClient, admin_key: str) -> None:
    sid, token = new_session(client, admin_key)
    good = hashlib.sha256(b"abc").hexdigest()
    ok = client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": "a", "sha256": good},
        content=b"abc",
        headers=bearer(token),
    )
    assert ok.status_code == 201
    bad = client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": "a", "sha256": "f" * 64},
        content=b"abc",
        headers=bearer(token),
    )
    assert bad.status_code == 400
    assert error_code(bad) == "checksum_mismatch"


@pytest.fixture
def stored(client: TestClient, admin_key: str) -> tuple[str, str, dict[str, Any], bytes]:
    sid, token = new_session(client, admin_key)
    data = bytes(range(256)) * 40
    response = client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": 'Prüf "bericht";\u00e9.pdf'},
        content=data,
        headers=bearer(token),
    )
    return sid, token, response.json(), data


def content_url(sid: str, artifact: dict[str, Any]) -> str:
    return f"{API}/sessions/{sid}/artifacts/{artifact['id']}/content"


def test_download_carries_the_sha256_etag_and_safe_headers(
    client: TestClient, stored: tuple[str, str, dict[str, Any], bytes]
) -> None:
    sid, token, artifact, data = stored
    response = client.get(content_url(sid, artifact), headers=bearer(token))
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["x-content-type-options"] == "nosniff"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="Pr_f _bericht___.pdf"')
    assert "filename*=UTF-8''Pr%C3%BCf%20%22bericht%22%3B%C3%A9.pdf" in disposition


def test_if_none_match_gives_304(
    client: TestClient, stored: tuple[str, str, dict[str, Any], bytes]
) -> None:
    sid, token, artifact, _ = stored
    etag = f'"{artifact["sha256"]}"'
    response = client.get(
        content_url(sid, artifact), headers={**bearer(token), "if-none-match": etag}
    )
    assert response.status_code == 304
    assert response.content == b""
    other = client.get(
        content_url(sid, artifact), headers={**bearer(token), "if-none-match": '"other"'}
    )
    assert other.status_code == 200


def test_range_requests_return_exact_slices(
    client: TestClient, stored: tuple[str, str, dict[str, Any], bytes]
) -> None:
    sid, token, artifact, data = stored
    response = client.get(
        content_url(sid, artifact), headers={**bearer(token), "range": "bytes=100-199"}
    )
    assert response.status_code == 206
    assert response.content == data[100:200]
    assert response.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = client.get(content_url(sid, artifact), headers={**bearer(token), "range": "bytes=-5"})
    assert tail.content == data[-5:]
    beyond = client.get(
        content_url(sid, artifact), headers={**bearer(token), "range": "bytes=999999-"}
    )
    assert beyond.status_code == 416


# Every one is refused alike on every blob store: 416, the JSON error, the size to aim at.
REFUSED_RANGES: dict[str, bytes] = {
    "past-the-end": b"bytes=999999-",
    "suffix-of-nothing": b"bytes=-0",
    "not-numbers": b"bytes=abc",
    "last-before-first": b"bytes=20-10",
    "no-range": b"bytes=",
    "lone-dash": b"bytes=-",
    "no-equals-sign": b"bytes",
    "signed": b"bytes=+1-5",
    "non-ascii": b"bytes=\xb2-",
}


@pytest.mark.parametrize("value", list(REFUSED_RANGES.values()), ids=list(REFUSED_RANGES))
def test_a_range_that_cannot_be_served_is_416_with_the_json_error(
    client: TestClient, stored: tuple[str, str, dict[str, Any], bytes], value: bytes
) -> None:
    sid, token, artifact, data = stored
    headers = {b"authorization": f"Bearer {token}".encode(), b"range": value}
    response = client.get(content_url(sid, artifact), headers=headers)
    assert response.status_code == 416
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-range"] == f"bytes */{len(data)}"
    assert error_code(response) == "range_not_satisfiable"
    assert response.json()["error"]["message"]


def test_a_range_in_other_digits_than_ascii_is_416_not_a_crash(
    client: TestClient, stored: tuple[str, str, dict[str, Any], bytes]
) -> None:
    """'²' passes str.isdigit() but not int(). Sent through ASGITransport, which hands the
    header's bytes to the app as a server does (TestClient would re-encode them as UTF-8)."""
    sid, token, artifact, data = stored

    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            headers = {b"authorization": f"Bearer {token}".encode(), b"range": b"bytes=\xb2-"}
            return await http.get(content_url(sid, artifact), headers=headers)

    response = anyio.run(fetch)
    assert response.status_code == 416
    assert error_code(response) == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{len(data)}"


# RFC 9110 lets a server ignore Range: these get the whole body, 200, never multipart/byteranges.
WHOLE_BODY_RANGES: dict[str, dict[str, str]] = {
    "several-ranges": {"range": "bytes=0-9,20-29"},
    "several-with-one-bad": {"range": "bytes=0-9,abc"},
    "overlapping-ranges": {"range": "bytes=0-,0-,0-"},
    "another-unit": {"range": "items=0-9"},
    "stale-if-range": {"range": "bytes=0-9", "if-range": '"not-its-etag"'},
}


@pytest.mark.parametrize("headers", list(WHOLE_BODY_RANGES.values()), ids=list(WHOLE_BODY_RANGES))
def test_ranges_it_does_not_serve_one_by_one_get_the_whole_body(
    client: TestClient, stored: tuple[str, str, dict[str, Any], bytes], headers: dict[str, str]
) -> None:
    sid, token, artifact, data = stored
    response = client.get(content_url(sid, artifact), headers={**bearer(token), **headers})
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "application/pdf"
    assert "content-range" not in response.headers


def test_a_matching_if_range_gets_the_range(
    client: TestClient, stored: tuple[str, str, dict[str, Any], bytes]
) -> None:
    sid, token, artifact, data = stored
    response = client.get(
        content_url(sid, artifact),
        headers={**bearer(token), "range": "bytes=10-", "if-range": f'"{artifact["sha256"]}"'},
    )
    assert response.status_code == 206
    assert response.content == data[10:]
    assert response.headers["content-range"] == f"bytes 10-{len(data) - 1}/{len(data)}"


def test_an_empty_artifact_has_no_range(client: TestClient, admin_key: str) -> None:
    sid, token = new_session(client, admin_key)
    artifact = client.post(
        f"{API}/sessions/{sid}/artifacts",
        params={"name": "empty"},
        content=b"",
        headers=bearer(token),
    ).json()
    whole = client.get(content_url(sid, artifact), headers=bearer(token))
    assert (whole.status_code, whole.content) == (200, b"")
    for value in ("bytes=0-", "bytes=-1"):
        ranged = client.get(content_url(sid, artifact), headers={**bearer(token), "range": value})
        assert ranged.status_code == 416
        assert ranged.headers["content-range"] == "bytes */0"
        assert error_code(ranged) == "range_not_satisfiable"


def test_list_get_and_delete_artifacts(client: TestClient, admin_key: str) -> None:
    sid, token = new_session(client, admin_key)
    created = upload_three_ways(client, sid, token, b"data")
    listed = client.get(f"{API}/sessions/{sid}/artifacts", headers=bearer(token)).json()
    assert [a["id"] for a in listed["items"]] == [a["id"] for a in created]
    first = client.get(
        f"{API}/sessions/{sid}/artifacts", params={"limit": 2}, headers=bearer(token)
    ).json()
    rest = client.get(
        f"{API}/sessions/{sid}/artifacts",
        params={"cursor": first["next_cursor"]},
        headers=bearer(token),
    ).json()
    assert [a["id"] for a in first["items"] + rest["items"]] == [a["id"] for a in created]
    assert rest["next_cursor"] is None
    goldens = client.get(
        f"{API}/sessions/{sid}/artifacts", params={"kind": "golden"}, headers=bearer(token)
    ).json()
    assert [a["name"] for a in goldens["items"]] == ["raw.bin"]
    url = f"{API}/sessions/{sid}/artifacts/{created[0]['id']}"
    assert client.get(url, headers=bearer(token)).json() == created[0]
    assert client.delete(url, headers=bearer(token)).status_code == 200
    assert client.get(url, headers=bearer(token)).status_code == 404
    assert client.delete(url, headers=bearer(token)).status_code == 404


def test_close_reports_and_the_session_is_then_gone(client: TestClient, admin_key: str) -> None:
    sid, token = new_session(client, admin_key)
    upload_three_ways(client, sid, token, b"12345")
    report = client.delete(f"{API}/sessions/{sid}", headers=bearer(token)).json()
    assert report["closed"] is True
    assert (report["artifact_count"], report["deleted_bytes"]) == (3, 15)
    assert report["storage_removed"] is True
    assert set(report) == {
        "closed",
        "duration_s",
        "artifact_count",
        "deleted_bytes",
        "storage_removed",
    }
    assert client.get(f"{API}/sessions/{sid}", headers=bearer(token)).status_code == 404


def test_an_expired_session_answers_404_before_any_cleanup(
    client: TestClient, admin_key: str, clock: ManualClock
) -> None:
    sid, token = new_session(client, admin_key, idle_timeout_s=30)
    clock.advance(31)
    assert client.get(f"{API}/sessions/{sid}", headers=bearer(token)).status_code == 404


def test_admin_lists_every_session(client: TestClient, admin_key: str) -> None:
    for i in range(3):
        new_session(client, admin_key, id=f"s{i}")
    _, token = new_session(client, admin_key, id="s3")
    page = client.get(f"{API}/admin/sessions", headers=bearer(admin_key)).json()
    assert [s["id"] for s in page["items"]] == ["s0", "s1", "s2", "s3"]
    assert page["totals"] == {"sessions": 4, "artifacts": 0, "bytes": 0}
    assert [s["lease_count"] for s in page["items"]] == [0, 0, 0, 0]
    assert client.get(f"{API}/admin/sessions", headers=bearer(token)).status_code == 403


def test_unknown_routes_and_methods_answer_in_the_error_shape(client: TestClient) -> None:
    response = client.get(f"{API}/nothing-here")
    assert response.status_code == 404
    assert error_code(response) == "not_found"
    response = client.put(f"{API}/sessions")
    assert response.status_code == 405
    assert error_code(response) == "method_not_allowed"


def test_health_readiness_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    schema = client.get("/openapi.json").json()
    assert f"{API}/sessions/{{session_id}}/artifacts/{{artifact_id}}/content" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_the_api_mounts_inside_an_existing_app(store: Store, admin_key: str) -> None:
    host = FastAPI()
    host.mount("/files", create_app(store))
    with TestClient(host) as test_client:
        response = test_client.post("/files/api/v1/sessions", json={}, headers=bearer(admin_key))
        assert response.status_code == 201
