"""tus resumable uploads against a real `ephemera serve`: tuspy, SIGKILL, concurrent writers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import httpx2 as httpx
import pytest
from tusclient.client import TusClient
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader.uploader import Uploader

from tests.conftest import Server, bearer
from tests.databases import PostgresDatabases
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
CLAIM_TIMEOUT_S = "2"


class Reopenable(io.BytesIO):
    """tuspy closes the stream it is given after fingerprinting it, then reads it again."""

    def close(self) -> None:
        pass


def source_bytes(size: int, seed: int = 12) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(params=["embedded", "postgresql-s3"])
def start_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Server]]:
    """Start (and restart) `ephemera serve` on one data dir: the embedded default, or
    PostgreSQL with the blobs in a bucket of the test S3 server."""
    env = {"EPHEMERA_TUS_CLAIM_TIMEOUT_S": CLAIM_TIMEOUT_S}
    if request.param == "postgresql-s3":
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        env["EPHEMERA_DATABASE_URL"] = databases.fresh()
        env["EPHEMERA_BLOB_URL"] = str(request.getfixturevalue("s3_url"))
    started: list[Server] = []

    def start() -> Server:
        started.append(Server(tmp_path / "data", env).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


def open_session(server: Server, sid: str = "tus") -> dict[str, str]:
    created = httpx.post(
        f"{server.api}/sessions", json={"id": sid}, headers=server.admin(), timeout=30
    ).json()
    return bearer(created["token"])


def create_upload(server: Server, auth: dict[str, str], length: int, sid: str = "tus") -> str:
    created = httpx.post(
        f"{server.api}/sessions/{sid}/uploads",
        headers={
            **auth,
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": "filename Yi5iaW4=",
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert location.startswith("/api/v1/sessions/"), location  # a path, not a URL
    return str(httpx.URL(server.api).join(location))


def head(url: str, auth: dict[str, str]) -> httpx.Response:
    return httpx.head(url, headers={**auth, **TUS}, timeout=30)


def patch(
    url: str, auth: dict[str, str], offset: int, body: object, **kw: object
) -> httpx.Response:
    headers = {
        **auth,
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    return httpx.patch(url, headers=headers, content=body, timeout=60, **kw)  # type: ignore[arg-type]


def content_sha256(server: Server, auth: dict[str, str], artifact_id: str, sid: str = "tus") -> str:
    digest = hashlib.sha256()
    with httpx.stream(
        "GET",
        f"{server.api}/sessions/{sid}/artifacts/{artifact_id}/content",
        headers=auth,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            digest.update(chunk)
    return digest.hexdigest()


def test_tuspy_uploads_64_mib_and_a_second_uploader_resumes_from_the_stored_url(
    server: Server, tmp_path: Path
) -> None:
    data = source_bytes(64 * MiB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    auth = open_session(server)
    endpoint = f"{server.api}/sessions/tus/uploads"
    urls = tmp_path / "tus-urls.json"
    metadata = {"filename": "big.bin", "kind": "input"}

    def uploader(stream: BinaryIO, storage: FileStorage) -> Uploader:
        return TusClient(endpoint, headers=auth).uploader(
            file_stream=stream,
            chunk_size=8 * MiB,
            metadata=metadata,
            store_url=True,
            url_storage=storage,
        )

    storage = FileStorage(str(urls))  # type: ignore[no-untyped-call]
    first = uploader(Reopenable(path.read_bytes()), storage)
    first.upload(stop_at=24 * MiB)  # interrupted part-way: the process stops here
    storage.close()  # type: ignore[no-untyped-call]
    assert 24 * MiB <= first.offset < 64 * MiB

    # A new uploader (a new process, in effect) finds the URL in the storage on disk.
    storage = FileStorage(str(urls))  # type: ignore[no-untyped-call]
    second = uploader(Reopenable(path.read_bytes()), storage)
    assert second.url == first.url
    assert second.offset == first.offset  # resumed where the server says, not from zero
    second.upload()
    storage.close()  # type: ignore[no-untyped-call]

    done = head(str(second.url), auth)
    assert done.headers["Upload-Offset"] == str(64 * MiB)
    artifact_id = done.headers["Ephemera-Artifact-Id"]
    artifact = httpx.get(
        f"{endpoint[: -len('/uploads')]}/artifacts/{artifact_id}", headers=auth
    ).json()
    assert artifact["name"] == "big.bin"
    assert artifact["size"] == 64 * MiB
    assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    assert content_sha256(server, auth, artifact_id) == hashlib.sha256(data).hexdigest()


def test_sigkill_mid_patch_keeps_the_durable_offset_and_the_upload_completes(
    start_server: Callable[[], Server],
) -> None:
    size = 64 * MiB
    data = source_bytes(size)
    server = start_server()
    auth = open_session(server)
    url = create_upload(server, auth, size)
    sent = [0]

    def body() -> Iterator[bytes]:
        for start in range(0, size, MiB):
            sent[0] = start + MiB
            yield data[start : start + MiB]
            if start >= 40 * MiB:
                time.sleep(0.2)  # slow down, so the kill lands mid-body

    uploader = threading.Thread(
        target=lambda: _ignore_transport_errors(lambda: patch(url, auth, 0, body()))
    )
    uploader.start()
    wait_for(
        lambda: int(head(url, auth).headers["Upload-Offset"]) >= 16 * MiB,
        30,
        "a recorded checkpoint",
    )
    server.kill()
    uploader.join(30)
    assert sent[0] < size, "the body was sent whole before the kill"

    server = start_server()  # on another port: the upload's path is what stays
    url = server.api + url.split("/api/v1", 1)[1]
    offset = int(head(url, auth).headers["Upload-Offset"])
    assert 16 * MiB <= offset <= sent[0]
    # The rest from the server's offset: a stale claim of the dead server is taken over.
    finished = patch(url, auth, offset, data[offset:])
    assert finished.status_code == 204, finished.text
    assert finished.headers["Upload-Offset"] == str(size)
    artifact_id = finished.headers["Ephemera-Artifact-Id"]
    # Equal hashes of the whole: the bytes up to the offset were the source's prefix.
    assert content_sha256(server, auth, artifact_id) == hashlib.sha256(data).hexdigest()


def test_two_concurrent_patches_one_wins_and_bytes_never_interleave(
    start_server: Callable[[], Server],
) -> None:
    size = 24 * MiB
    data = source_bytes(size)
    server = start_server()
    auth = open_session(server)
    url = create_upload(server, auth, size)
    answers: dict[str, httpx.Response] = {}

    def slow_body() -> Iterator[bytes]:
        for start in range(0, size, MiB):
            yield data[start : start + MiB]
            time.sleep(0.3)  # a live writer: slower than the claim timeout, never silent

    first = threading.Thread(target=lambda: answers.update(a=patch(url, auth, 0, slow_body())))
    first.start()
    wait_for(
        lambda: int(head(url, auth).headers["Upload-Offset"]) >= 8 * MiB,
        20,
        "the first PATCH's first checkpoint",
    )
    # A second writer at the offset the server reports, while the first is still sending.
    offset = int(head(url, auth).headers["Upload-Offset"])
    answers["b"] = patch(url, auth, offset, b"\xff" * (size - offset))
    first.join(60)

    assert answers["b"].status_code in (409, 423), answers["b"].text
    assert answers["a"].status_code == 204, answers["a"].text
    artifact_id = answers["a"].headers["Ephemera-Artifact-Id"]
    assert content_sha256(server, auth, artifact_id) == hashlib.sha256(data).hexdigest()


def _ignore_transport_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.TransportError):
        call()


def test_a_slow_sender_keeps_its_claim(start_server: Callable[[], Server]) -> None:
    """A body that trickles in (far below the server's buffer per claim timeout) still
    heartbeats: a second writer meanwhile is refused instead of taking the upload over."""
    size = 512 * 1024
    data = source_bytes(size)
    server = start_server()
    auth = open_session(server)
    url = create_upload(server, auth, size)
    answers: dict[str, httpx.Response] = {}

    def trickle() -> Iterator[bytes]:
        for start in range(0, size, 16 * 1024):
            yield data[start : start + 16 * 1024]
            time.sleep(0.1)  # 160 KiB/s: the claim timeout passes long before a buffer fills

    first = threading.Thread(target=lambda: answers.update(a=patch(url, auth, 0, trickle())))
    first.start()
    time.sleep(float(CLAIM_TIMEOUT_S) + 0.5)
    answers["b"] = patch(url, auth, 0, b"\xff" * size)
    first.join(60)

    assert answers["b"].status_code in (409, 423), answers["b"].text
    assert answers["a"].status_code == 204, answers["a"].text
    artifact_id = answers["a"].headers["Ephemera-Artifact-Id"]
    assert content_sha256(server, auth, artifact_id) == hashlib.sha256(data).hexdigest()
