"""The tus protocol's shapes: discovery, CORS, creation with an upload, deferred length,
checksums, metadata, expiry headers, and the whole body's sha256."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.http import create_app
from ephemera.http.slots import upload_slots
from ephemera.testing import ManualClock
from tests.conftest import bearer

API = "/api/v1"
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}
ORIGIN = "https://app.example"


@dataclass
class Api:
    client: TestClient
    auth: dict[str, str]  # the session token
    sid: str

    @property
    def uploads(self) -> str:
        return f"{API}/sessions/{self.sid}/uploads"

    def artifact(self, artifact_id: str) -> dict[str, Any]:
        got = self.client.get(
            f"{API}/sessions/{self.sid}/artifacts/{artifact_id}", headers=self.auth
        )
        return dict(got.json())


Open = Callable[..., Api]


@pytest.fixture
def open_api(data_dir: Path, clock: ManualClock) -> Iterator[Open]:
    opened: list[tuple[Store, TestClient]] = []

    def open_(**settings: object) -> Api:
        store = Store.open(Settings(data_dir=data_dir, **settings), clock=clock)  # type: ignore[arg-type]
        client = TestClient(create_app(store))
        opened.append((store, client))
        admin = bearer(store.create_key(f"k{len(opened)}"))
        body = {"id": f"s{len(opened)}", "idle_timeout_s": 86400}
        token = client.post(f"{API}/sessions", json=body, headers=admin).json()["token"]
        return Api(client, bearer(token), str(body["id"]))

    yield open_
    for store, client in opened:
        client.close()
        store.close()


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def headers(auth: dict[str, str], **extra: str) -> dict[str, str]:
    return {**auth, **TUS, **extra}


def test_discovery_needs_no_credentials_and_lists_the_extensions(open_api: Open) -> None:
    api = open_api()
    answer = api.client.options(api.uploads, headers={"Origin": ORIGIN})
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert set(answer.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
    }
    assert answer.headers["Tus-Checksum-Algorithm"] == "sha1,sha256"
    assert answer.headers["Tus-Max-Size"] == str(1024**3)
    # No origin is allowed unless configured.
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_configured_origins_get_cors_headers_and_others_do_not(open_api: Open) -> None:
    api = open_api(tus_cors_origins=[ORIGIN])
    client, auth = api.client, api.auth
    preflight = client.options(
        api.uploads, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Upload-Offset" in preflight.headers["Access-Control-Allow-Headers"]
    created = client.post(
        api.uploads,
        headers=headers(
            auth, Origin=ORIGIN, **{"Upload-Length": "3"}, **{"Upload-Metadata": meta(filename="a")}
        ),
    )
    assert created.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "Upload-Offset", "Ephemera-Artifact-Id", "Upload-Expires"} <= exposed
    other = client.options(api.uploads, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_creation_with_upload_completes_in_one_request(open_api: Open) -> None:
    api = open_api()
    client, auth = api.client, api.auth
    created = client.post(
        api.uploads,
        headers=headers(
            auth,
            **STREAM,
            **{"Upload-Length": "5", "Upload-Metadata": meta(filename="one.txt", kind="golden")},
        ),
        content=b"hello",
    )
    assert created.status_code == 201
    # A path, as tus allows: right behind a proxy that rewrites the host or the scheme.
    assert created.headers["Location"].startswith(f"{API}/sessions/{api.sid}/uploads/")
    assert created.headers["Upload-Offset"] == "5"
    artifact_id = created.headers["Ephemera-Artifact-Id"]
    artifact = api.artifact(artifact_id)
    assert artifact["kind"] == "golden"
    assert artifact["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_deferred_length_metadata_expiry_and_checksums(open_api: Open, clock: ManualClock) -> None:
    api = open_api()
    client, auth = api.client, api.auth
    created = client.post(
        api.uploads,
        headers=headers(
            auth,
            **{
                "Upload-Defer-Length": "1",
                "Upload-Metadata": meta(filename="d.bin", relativePath="x"),
            },
        ),
    )
    url = created.headers["Location"]
    head = client.head(url, headers=headers(auth))
    assert head.headers["Upload-Defer-Length"] == "1"
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Upload-Metadata"] == meta(filename="d.bin", relativePath="x")
    expires = parsedate_to_datetime(head.headers["Upload-Expires"])
    assert expires.tzinfo is not None  # an HTTP date, in GMT
    assert (expires - clock.now()).total_seconds() == pytest.approx(86400, abs=1)

    digest = base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
    first = client.patch(
        url,
        headers=headers(
            auth, **STREAM, **{"Upload-Offset": "0", "Upload-Checksum": f"sha256 {digest}"}
        ),
        content=b"abc",
    )
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "3"
    last = client.patch(
        url,
        headers=headers(auth, **STREAM, **{"Upload-Offset": "3", "Upload-Length": "6"}),
        content=b"def",
    )
    assert last.status_code == 204
    assert last.headers["Upload-Length"] == "6"
    assert "Ephemera-Artifact-Id" in last.headers
    assert "Upload-Expires" not in last.headers  # finished: it no longer expires


def test_a_whole_body_that_is_not_the_declared_sha256_is_refused_and_removed(
    open_api: Open,
) -> None:
    api = open_api()
    client, auth = api.client, api.auth
    created = client.post(
        api.uploads,
        headers=headers(
            auth,
            **{"Upload-Length": "3", "Upload-Metadata": meta(filename="s.bin", sha256="0" * 64)},
        ),
    )
    url = created.headers["Location"]
    answer = client.patch(
        url, headers=headers(auth, **STREAM, **{"Upload-Offset": "0"}), content=b"abc"
    )
    assert answer.status_code == 460
    assert client.head(url, headers=headers(auth)).status_code == 404
    listed = client.get(f"{API}/sessions/{api.sid}/artifacts", headers=auth).json()
    assert listed["items"] == []


def test_an_empty_upload_is_complete_at_its_creation(open_api: Open) -> None:
    api = open_api()
    client, auth = api.client, api.auth
    created = client.post(
        api.uploads,
        headers=headers(auth, **{"Upload-Length": "0", "Upload-Metadata": meta(filename="e")}),
    )
    assert created.status_code == 201
    artifact_id = created.headers["Ephemera-Artifact-Id"]
    assert api.artifact(artifact_id)["size"] == 0


def test_termination_removes_the_upload(open_api: Open) -> None:
    api = open_api()
    client, auth = api.client, api.auth
    created = client.post(
        api.uploads,
        headers=headers(auth, **{"Upload-Length": "9", "Upload-Metadata": meta(filename="t")}),
    )
    url = created.headers["Location"]
    assert (
        client.patch(
            url, headers=headers(auth, **STREAM, **{"Upload-Offset": "0"}), content=b"abcd"
        ).status_code
        == 204
    )
    assert client.delete(url, headers=headers(auth)).status_code == 204
    assert client.head(url, headers=headers(auth)).status_code == 404
    assert client.delete(url, headers=headers(auth)).status_code == 404


def test_wrong_tokens_on_tus_routes_are_throttled_and_audited(
    data_dir: Path, clock: ManualClock
) -> None:
    """Guessing tokens through the upload routes counts like on every other route: after
    the limit every request of the address is 429, and the burst is audited."""
    settings = Settings(data_dir=data_dir, auth_failures_per_minute=3)
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        token = store.create_session("s1", idle_timeout_s=86400).token
        uploads = f"{API}/sessions/s1/uploads"
        guess = bearer("guess-0001")
        creation = {"Upload-Length": "1", "Upload-Metadata": meta(filename="g")}
        answers = [
            client.post(uploads, headers=headers(guess, **creation)),
            client.head(f"{uploads}/0000", headers=headers(guess)),
            client.delete(f"{uploads}/0000", headers=headers(guess)),
            client.post(uploads, headers=headers(bearer(token), **creation)),
        ]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        assert [e.action for e in store.audit_log(action="auth.throttled").items] == [
            "auth.throttled"
        ]


def test_the_session_quota_counts_what_open_uploads_declared(open_api: Open) -> None:
    """Open uploads' bytes are staged before they are artifacts: a creation (or a PATCH of
    a deferred length) that would take the session past its quota with them is refused."""
    api = open_api(session_quota_bytes=1000)
    client, auth = api.client, api.auth

    def create(**extra: str) -> Any:
        return client.post(
            api.uploads, headers=headers(auth, **{"Upload-Metadata": meta(filename="q")}, **extra)
        )

    first = create(**{"Upload-Length": "600"})
    assert first.status_code == 201
    assert create(**{"Upload-Length": "600"}).status_code == 413
    deferred = create(**{"Upload-Defer-Length": "1"})
    assert deferred.status_code == 201
    url = deferred.headers["Location"]
    over = client.patch(
        url, headers=headers(auth, **STREAM, **{"Upload-Offset": "0"}), content=b"d" * 500
    )
    assert over.status_code == 413
    assert client.head(url, headers=headers(auth)).headers["Upload-Offset"] == "0"
    fits = client.patch(
        url, headers=headers(auth, **STREAM, **{"Upload-Offset": "0"}), content=b"d" * 400
    )
    assert fits.status_code == 204


def test_a_patch_takes_one_of_the_sessions_upload_slots(open_api: Open) -> None:
    api = open_api(max_concurrent_uploads=1)
    client, auth = api.client, api.auth
    created = client.post(
        api.uploads,
        headers=headers(auth, **{"Upload-Length": "3", "Upload-Metadata": meta(filename="s")}),
    )
    url = created.headers["Location"]
    patch = headers(auth, **STREAM, **{"Upload-Offset": "0"})
    store = client.app.state.store  # type: ignore[attr-defined]
    with upload_slots(store).hold(api.sid):  # an artifact upload of the session in flight
        busy = client.patch(url, headers=patch, content=b"abc")
    assert busy.status_code == 429
    assert busy.headers["Tus-Resumable"] == "1.0.0"
    assert client.patch(url, headers=patch, content=b"abc").status_code == 204
