"""Every bad input gets a clear error and changes nothing on disk or in the database."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from ephemera import Settings, Store
from ephemera.http import create_app
from ephemera.testing import ManualClock
from tests.conftest import BUILTIN_PROCESSORS, bearer, snapshot

API = "/api/v1"
LIMIT = 64 * 1024


@dataclass
class World:
    client: TestClient
    store: Store
    admin: dict[str, str]
    auth: dict[str, str]
    sid: str
    artifact_id: str
    # An artifact of another session, s2, whose token the attacks never have.
    other_artifact_id: str

    def upload(self, **kwargs: Any) -> Response:
        return self.client.post(f"{API}/sessions/{self.sid}/artifacts", **kwargs)


@pytest.fixture
def world(data_dir: Path, clock: ManualClock) -> Iterator[World]:
    settings = Settings(
        data_dir=data_dir,
        max_upload_bytes=LIMIT,
        max_json_upload_bytes=LIMIT,
        # sample-upper for the task attacks; sample-sleep stays disabled, as in production.
        processors=[*BUILTIN_PROCESSORS, "sample-upper"],
    )
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        admin = bearer(store.create_key("test"))
        created = client.post(f"{API}/sessions", json={"id": "s1"}, headers=admin).json()
        auth = bearer(created["token"])
        artifact = client.post(
            f"{API}/sessions/s1/artifacts", params={"name": "a.bin"}, content=b"a", headers=auth
        ).json()
        other = client.post(f"{API}/sessions", json={"id": "s2"}, headers=admin).json()
        elsewhere = client.post(
            f"{API}/sessions/s2/artifacts",
            params={"name": "golden.bin"},
            content=b"g",
            headers=bearer(other["token"]),
        ).json()
        yield World(client, store, admin, auth, "s1", artifact["id"], elsewhere["id"])


Attack = Callable[[World], Response]
T = TypeVar("T")


def bind(value: T, send: Callable[[World, T], Response]) -> Attack:
    return lambda w: send(w, value)


def multipart(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def form_headers(w: World, boundary: str = "xyz") -> dict[str, str]:
    return {**w.auth, "content-type": f"multipart/form-data; boundary={boundary}"}


def chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 4096):
        yield b"z" * 4096


HOSTILE_SESSION_IDS = ["../x", "a/b", "x" * 65, "é", "", "a\x00", " a", "-a"]
HOSTILE_NAMES = ["../../etc/passwd", "a\x00b", "n" * 10_000, "a\x1b[31mb", "a\nb", "..", "a/b"]

ATTACKS: dict[str, tuple[int, str, Attack]] = {}


def attack(key: str, status: int, code: str) -> Callable[[Attack], Attack]:
    def register(fn: Attack) -> Attack:
        ATTACKS[key] = (status, code, fn)
        return fn

    return register


for i, hostile in enumerate(HOSTILE_SESSION_IDS):
    attack(f"create-session-id-{i}", 422, "invalid_input")(
        bind(
            hostile, lambda w, h: w.client.post(f"{API}/sessions", json={"id": h}, headers=w.admin)
        )
    )

for i, hostile in enumerate(HOSTILE_NAMES):
    attack(f"raw-name-{i}", 422, "invalid_input")(
        bind(hostile, lambda w, h: w.upload(params={"name": h}, content=b"x", headers=w.auth))
    )
    attack(f"json-name-{i}", 422, "invalid_input")(
        bind(
            hostile,
            lambda w, h: w.upload(
                json={"name": h, "data_base64": base64.b64encode(b"x").decode()}, headers=w.auth
            ),
        )
    )
    attack(f"multipart-name-field-{i}", 422, "invalid_input")(
        bind(
            hostile,
            lambda w, h: w.upload(
                content=multipart("xyz", ("name", None, h.encode()), ("file", "ok.bin", b"x")),
                headers=form_headers(w),
            ),
        )
    )

attack("multipart-filename-traversal", 422, "invalid_input")(
    lambda w: w.upload(
        content=multipart("xyz", ("file", "../../etc/passwd", b"x")), headers=form_headers(w)
    )
)
attack("raw-over-limit-declared", 413, "too_large")(
    lambda w: w.upload(params={"name": "big"}, content=b"x" * (LIMIT + 1), headers=w.auth)
)
attack("raw-over-limit-chunked", 413, "too_large")(
    lambda w: w.upload(params={"name": "big"}, content=chunks(LIMIT + 8192), headers=w.auth)
)
attack("multipart-over-limit", 413, "too_large")(
    lambda w: w.upload(
        content=multipart("xyz", ("file", "big.bin", b"x" * (LIMIT + 1))), headers=form_headers(w)
    )
)
attack("json-over-limit", 413, "too_large")(
    lambda w: w.upload(
        json={"name": "big", "data_base64": base64.b64encode(b"x" * LIMIT).decode()},
        headers=w.auth,
    )
)
attack("raw-checksum-mismatch", 400, "checksum_mismatch")(
    lambda w: w.upload(params={"name": "a", "sha256": "0" * 64}, content=b"x", headers=w.auth)
)
attack("multipart-checksum-mismatch", 400, "checksum_mismatch")(
    lambda w: w.upload(
        content=multipart("xyz", ("file", "a.bin", b"x"), ("sha256", None, b"0" * 64)),
        headers=form_headers(w),
    )
)
attack("json-checksum-mismatch", 400, "checksum_mismatch")(
    lambda w: w.upload(
        json={"name": "a", "data_base64": "eA==", "sha256": "0" * 64}, headers=w.auth
    )
)
attack("checksum-not-hex", 422, "invalid_input")(
    lambda w: w.upload(params={"name": "a", "sha256": "xyz"}, content=b"x", headers=w.auth)
)
attack("create-malformed-json", 400, "malformed_body")(
    lambda w: w.client.post(
        f"{API}/sessions",
        content=b'{"id": "a",',
        headers={**w.admin, "content-type": "application/json"},
    )
)
attack("create-wrong-types", 422, "invalid_input")(
    lambda w: w.client.post(f"{API}/sessions", json={"idle_timeout_s": "soon"}, headers=w.admin)
)
attack("create-unknown-field", 422, "invalid_input")(
    lambda w: w.client.post(f"{API}/sessions", json={"token": "mine"}, headers=w.admin)
)
attack("create-negative-timeout", 422, "invalid_input")(
    lambda w: w.client.post(f"{API}/sessions", json={"idle_timeout_s": -1}, headers=w.admin)
)
attack("create-label-too-long", 422, "invalid_input")(
    lambda w: w.client.post(f"{API}/sessions", json={"label": "l" * 201}, headers=w.admin)
)
attack("create-metadata-not-object", 422, "invalid_input")(
    lambda w: w.client.post(f"{API}/sessions", json={"metadata": [1, 2]}, headers=w.admin)
)
attack("json-upload-malformed", 400, "malformed_body")(
    lambda w: w.upload(content=b"{not json", headers={**w.auth, "content-type": "application/json"})
)
attack("json-upload-bad-base64", 400, "malformed_body")(
    lambda w: w.upload(json={"name": "a", "data_base64": "@@@notbase64"}, headers=w.auth)
)
attack("json-upload-missing-data", 422, "invalid_input")(
    lambda w: w.upload(json={"name": "a"}, headers=w.auth)
)
attack("multipart-without-boundary", 400, "malformed_body")(
    lambda w: w.upload(content=b"x", headers={**w.auth, "content-type": "multipart/form-data"})
)
attack("multipart-truncated", 400, "malformed_body")(
    lambda w: w.upload(
        content=multipart("xyz", ("file", "a.bin", b"x" * 5000))[:-20], headers=form_headers(w)
    )
)
attack("multipart-garbage", 400, "malformed_body")(
    lambda w: w.upload(content=b"\x00\xff garbage \r\n\r\n", headers=form_headers(w))
)
attack("multipart-no-file", 422, "invalid_input")(
    lambda w: w.upload(content=multipart("xyz", ("kind", None, b"input")), headers=form_headers(w))
)
attack("multipart-two-files", 422, "invalid_input")(
    lambda w: w.upload(
        content=multipart("xyz", ("file", "a.bin", b"x"), ("file", "b.bin", b"y")),
        headers=form_headers(w),
    )
)
attack("multipart-unknown-field", 422, "invalid_input")(
    lambda w: w.upload(
        content=multipart("xyz", ("evil", None, b"1"), ("file", "a.bin", b"x")),
        headers=form_headers(w),
    )
)
attack("raw-without-name", 422, "invalid_input")(lambda w: w.upload(content=b"x", headers=w.auth))
attack("bad-storage-class", 422, "invalid_input")(
    lambda w: w.upload(params={"name": "a", "storage": "forever"}, content=b"x", headers=w.auth)
)
attack("bad-kind", 422, "invalid_input")(
    lambda w: w.upload(params={"name": "a", "kind": "../x"}, content=b"x", headers=w.auth)
)
attack("bad-content-type", 422, "invalid_input")(
    lambda w: w.upload(
        params={"name": "a"}, content=b"x", headers={**w.auth, "content-type": "not a type"}
    )
)
attack("bad-expiry", 422, "invalid_input")(
    lambda w: w.upload(params={"name": "a", "expires_in_s": 0}, content=b"x", headers=w.auth)
)
attack("bad-cursor", 422, "invalid_input")(
    lambda w: w.client.get(f"{API}/sessions/s1/artifacts", params={"cursor": "../"}, headers=w.auth)
)
for i, hostile in enumerate(["..%2Fx", "a%2Fb", "x" * 65, "%C3%A9", "%00"]):
    attack(f"path-session-id-{i}", 404, "not_found")(
        bind(hostile, lambda w, h: w.client.get(f"{API}/sessions/{h}/artifacts", headers=w.auth))
    )
    attack(f"path-session-id-upload-{i}", 404, "not_found")(
        bind(
            hostile,
            lambda w, h: w.client.post(
                f"{API}/sessions/{h}/artifacts", params={"name": "a"}, content=b"x", headers=w.admin
            ),
        )
    )
for i, value in enumerate(["bytes=999999-", "bytes=abc", "bytes=9-1", "bytes=-0", "bytes"]):
    attack(f"download-range-{i}", 416, "range_not_satisfiable")(
        bind(
            value,
            lambda w, r: w.client.get(
                f"{API}/sessions/s1/artifacts/{w.artifact_id}/content",
                headers={**w.auth, "range": r},
            ),
        )
    )
for label, headers in {
    "missing": {},
    "empty": {"Authorization": "Bearer "},
    "not-bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
}.items():
    attack(f"upload-{label}-token", 401, "unauthenticated")(
        bind(headers, lambda w, h: w.upload(params={"name": "a"}, content=b"x", headers=h))
    )
    attack(f"close-{label}-token", 401, "unauthenticated")(
        bind(headers, lambda w, h: w.client.delete(f"{API}/sessions/s1", headers=h))
    )
    attack(f"create-{label}-token", 401, "unauthenticated")(
        bind(headers, lambda w, h: w.client.post(f"{API}/sessions", json={}, headers=h))
    )
for label, token in {"wrong": "eps_wrong", "junk": "x" * 5000}.items():
    attack(f"upload-{label}-token", 404, "not_found")(
        bind(token, lambda w, t: w.upload(params={"name": "a"}, content=b"x", headers=bearer(t)))
    )
    attack(f"close-{label}-token", 404, "not_found")(
        bind(token, lambda w, t: w.client.delete(f"{API}/sessions/s1", headers=bearer(t)))
    )
    attack(f"delete-artifact-{label}-token", 404, "not_found")(
        bind(
            token,
            lambda w, t: w.client.delete(
                f"{API}/sessions/s1/artifacts/{w.artifact_id}", headers=bearer(t)
            ),
        )
    )
    attack(f"create-{label}-token", 403, "forbidden")(
        bind(token, lambda w, t: w.client.post(f"{API}/sessions", json={}, headers=bearer(t)))
    )

# A credential shaped like a key is judged as a key, never as a session token: unknown, 401.
for label, token in {"admin": "epa_wrong", "worker": "epw_wrong", "client": "epc_wrong"}.items():
    attack(f"upload-unknown-{label}-key", 401, "unauthenticated")(
        bind(token, lambda w, t: w.upload(params={"name": "a"}, content=b"x", headers=bearer(t)))
    )
    attack(f"close-unknown-{label}-key", 401, "unauthenticated")(
        bind(token, lambda w, t: w.client.delete(f"{API}/sessions/s1", headers=bearer(t)))
    )
    attack(f"create-unknown-{label}-key", 401, "unauthenticated")(
        bind(token, lambda w, t: w.client.post(f"{API}/sessions", json={}, headers=bearer(t)))
    )


# -- tasks and the worker API -------------------------------------------------------------------


def submit(w: World, body: Any, headers: dict[str, str] | None = None) -> Response:
    return w.client.post(f"{API}/sessions/s1/tasks", json=body, headers=headers or w.auth)


def upper(w: World, **extra: Any) -> dict[str, Any]:
    return {"processor": "sample-upper", "inputs": [w.artifact_id], **extra}


attack("task-malformed-json", 400, "malformed_body")(
    lambda w: w.client.post(
        f"{API}/sessions/s1/tasks",
        content=b'{"processor": "sample-upper",',
        headers={**w.auth, "content-type": "application/json"},
    )
)
attack("task-unknown-processor", 422, "invalid_input")(
    lambda w: submit(w, {"processor": "../../bin/sh", "inputs": [w.artifact_id]})
)
# Names of processors that are not enabled here: installed or not, odd or plain.
HOSTILE_PROCESSORS = [
    "sample-sleep",  # installed, and enabled in other tests, but not here
    "../../bin/sh",
    "roi-compare\x00",
    "roi-compare\n",
    "\x1b[31m",
    "ROI-COMPARE",
    "é",
    "x" * 100,
]
for i, hostile in enumerate(HOSTILE_PROCESSORS):
    attack(f"task-processor-not-enabled-{i}", 422, "invalid_input")(
        bind(hostile, lambda w, h: submit(w, {"processor": h, "params": {"journal": "/tmp/j"}}))
    )
    attack(f"processor-not-enabled-{i}", 404, "not_found")(
        bind(hostile, lambda w, h: w.client.get(f"{API}/processors/{quote(h, safe='')}"))
    )
attack("task-processor-name-too-long", 422, "invalid_input")(
    lambda w: submit(w, {"processor": "x" * 101})
)
attack("processor-path-traversal", 404, "not_found")(
    lambda w: w.client.get(f"{API}/processors/..%2F..%2Fetc%2Fpasswd")
)
attack("task-bad-params", 422, "invalid_input")(
    lambda w: submit(w, upper(w, params={"suffix": {"nested": True}}))
)
attack("task-unknown-field", 422, "invalid_input")(lambda w: submit(w, upper(w, priority=9)))
attack("task-too-many-attempts", 422, "invalid_input")(
    lambda w: submit(w, upper(w, max_attempts=10_000))
)
attack("task-missing-input", 404, "not_found")(
    lambda w: submit(w, {"processor": "sample-upper", "inputs": ["../../etc/passwd"]})
)


def reference(w: World, **extra: Any) -> dict[str, Any]:
    other = {"session_id": "s2", "artifact_id": w.other_artifact_id}
    return {"processor": "sample-upper", "inputs": [other], **extra}


attack("task-other-sessions-input-without-its-token", 404, "not_found")(
    lambda w: submit(w, reference(w))
)
attack("task-other-sessions-input-with-a-wrong-token", 404, "not_found")(
    lambda w: submit(w, reference(w, reference_tokens={"s2": "eps_not-its-token"}))
)
attack("task-wrong-token", 404, "not_found")(
    lambda w: submit(w, upper(w), headers=bearer("eps_wrong"))
)
attack("task-hostile-id", 404, "not_found")(
    lambda w: w.client.get(f"{API}/sessions/s1/tasks/..%2F..%2Fx", headers=w.auth)
)
attack("task-cancel-unknown", 404, "not_found")(
    lambda w: w.client.post(
        f"{API}/sessions/s1/tasks/01a1fd3f-147d-75e5-bd31-fe6998c9f3b0/cancel", headers=w.auth
    )
)
attack("worker-claim-with-a-session-token", 403, "forbidden")(
    lambda w: w.client.post(
        f"{API}/worker/claim", json={"worker": "w", "processors": ["sample-upper"]}, headers=w.auth
    )
)
attack("worker-claim-without-processors", 422, "invalid_input")(
    lambda w: w.client.post(
        f"{API}/worker/claim", json={"worker": "w", "processors": []}, headers=w.admin
    )
)
attack("worker-complete-unknown-claim", 409, "conflict")(
    lambda w: w.client.post(
        f"{API}/worker/tasks/01a1fd3f-147d-75e5-bd31-fe6998c9f3b0/complete",
        json={},
        headers={**w.admin, "Ephemera-Claim": "guess"},
    )
)
attack("worker-output-unknown-claim", 409, "conflict")(
    lambda w: w.client.post(
        f"{API}/worker/tasks/01a1fd3f-147d-75e5-bd31-fe6998c9f3b0/outputs",
        params={"name": "x.bin"},
        content=b"x",
        headers={**w.admin, "Ephemera-Claim": "guess"},
    )
)
attack("worker-input-without-claim", 422, "invalid_input")(
    lambda w: w.client.get(
        f"{API}/worker/tasks/01a1fd3f-147d-75e5-bd31-fe6998c9f3b0/inputs/{w.artifact_id}/content",
        headers=w.admin,
    )
)

attack("retention-before-year-one-in-utc", 422, "invalid_input")(
    lambda w: w.client.put(
        f"{API}/sessions/s1/artifacts/{w.artifact_id}/retention",
        json={"retain_until": "0001-01-01T00:00:00.0+00:01"},
        headers=w.auth,
    )
)


@pytest.mark.parametrize("key", list(ATTACKS))
def test_bad_input_is_refused_clearly_and_changes_nothing(world: World, key: str) -> None:
    status, code, send = ATTACKS[key]
    before = snapshot(world.store)
    response = send(world)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert snapshot(world.store) == before


def test_the_snapshot_sees_a_change(world: World) -> None:
    """The guard of the test above: a request that does store something is seen."""
    before = snapshot(world.store)
    assert (
        world.upload(params={"name": "b.bin"}, content=b"x", headers=world.auth).status_code == 201
    )
    assert snapshot(world.store) != before
