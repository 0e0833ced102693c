"""Bad tus requests: each is refused clearly and changes nothing (rows, recorded bytes)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from ephemera import Settings, Store
from ephemera.http import create_app
from ephemera.testing import ManualClock
from tests.conftest import bearer

API = "/api/v1"
LIMIT = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}
LENGTH = 4000
SENT = b"\x01" * 1000


@dataclass
class World:
    client: TestClient
    store: Store
    auth: dict[str, str]
    other_auth: dict[str, str]  # the token of another live session
    base: str
    open_url: str  # 1000 of 4000 bytes recorded
    finished_url: str
    terminated_url: str
    expired_url: str

    def create(self, headers: dict[str, str], body: bytes = b"") -> Response:
        return self.client.post(self.base, headers={**self.auth, **TUS, **headers}, content=body)

    def patch(self, url: str, offset: int, body: bytes, **headers: str) -> Response:
        sent = {**self.auth, **TUS, **STREAM, "Upload-Offset": str(offset), **headers}
        return self.client.patch(url, headers=sent, content=body)


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.fixture
def world(data_dir: Path, clock: ManualClock) -> Iterator[World]:
    settings = Settings(data_dir=data_dir, max_upload_bytes=LIMIT, tus_upload_ttl_s=3600)
    with Store.open(settings, clock=clock) as store, TestClient(create_app(store)) as client:
        admin = bearer(store.create_key("test"))
        body = {"id": "s1", "idle_timeout_s": 86400}
        auth = bearer(client.post(f"{API}/sessions", json=body, headers=admin).json()["token"])
        other = {"id": "s2", "idle_timeout_s": 86400}
        other_auth = bearer(
            client.post(f"{API}/sessions", json=other, headers=admin).json()["token"]
        )
        base = f"{API}/sessions/s1/uploads"
        w = World(client, store, auth, other_auth, base, "", "", "", "")

        def new() -> str:
            created = w.create(
                {"Upload-Length": str(LENGTH), "Upload-Metadata": meta(filename="f.bin")}
            )
            assert created.status_code == 201, created.text
            return str(created.headers["Location"])

        w.expired_url = new()
        clock.advance(3000)
        w.open_url = new()
        assert w.patch(w.open_url, 0, SENT).status_code == 204
        w.finished_url = new()
        assert w.patch(w.finished_url, 0, b"\x02" * LENGTH).status_code == 204
        w.terminated_url = new()
        assert w.client.delete(w.terminated_url, headers={**auth, **TUS}).status_code == 204
        clock.advance(700)  # the first upload is past its expiry now
        # Recorded activity is not what the attacks may change: record it before they run.
        assert w.client.head(w.open_url, headers={**auth, **TUS}).status_code == 200
        yield w


def state(w: World) -> tuple[str, list[tuple[str, str]]]:
    """Every row, and every recorded byte: artifacts, and each open upload's recorded prefix."""
    blobs = w.store.settings.data_dir / "blobs"
    files = [
        (str(p.relative_to(blobs)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted((blobs / "sessions").rglob("*"))
        if p.is_file()
    ]
    for url in (w.open_url, w.expired_url):
        upload = w.store.catalog.get_upload("s1", url.rsplit("/", 1)[1])
        assert upload is not None
        for number, size in upload.pieces.get("segments", []):
            segment = blobs / "staging" / f"tus-{upload.id}" / str(number)
            files.append((str(segment), hashlib.sha256(segment.read_bytes()[:size]).hexdigest()))
    return _rows(w.store), files


def _rows(store: Store) -> str:
    """Every row; of an upload its data, not its claim (a refused PATCH may have held it)."""
    from ephemera.catalog.schema import metadata, uploads

    claim = {"writer", "generation", "heartbeat_at", "next_piece"}
    with store.catalog.engine.connect() as conn:
        return "\n".join(
            repr(tuple(v for c, v in row._mapping.items() if t is not uploads or c not in claim))
            for t in metadata.sorted_tables
            for row in conn.execute(t.select())
        )


Attack = Callable[[World], Response]
ATTACKS: dict[str, tuple[int, Attack]] = {
    "wrong offset": (409, lambda w: w.patch(w.open_url, 999, b"x")),
    "offset past the recorded one": (409, lambda w: w.patch(w.open_url, 1500, b"x")),
    "checksum mismatch": (
        460,
        lambda w: w.patch(
            w.open_url,
            1000,
            b"y" * 10,
            **{
                "Upload-Checksum": "sha1 " + b64(hashlib.sha1(b"z", usedforsecurity=False).digest())
            },
        ),
    ),
    "unsupported checksum algorithm": (
        400,
        lambda w: w.patch(w.open_url, 1000, b"y", **{"Upload-Checksum": "md5 " + b64(b"0" * 16)}),
    ),
    "body past the upload's length": (413, lambda w: w.patch(w.open_url, 1000, b"y" * LENGTH)),
    "length over the upload limit": (
        413,
        lambda w: w.create(
            {"Upload-Length": str(LIMIT + 1), "Upload-Metadata": meta(filename="a")}
        ),
    ),
    "concatenation asked at creation": (
        400,
        lambda w: w.create(
            {
                "Upload-Length": "10",
                "Upload-Metadata": meta(filename="a"),
                "Upload-Concat": "partial",
            }
        ),
    ),
    "concatenation asked in a PATCH": (
        400,
        lambda w: w.patch(w.open_url, 1000, b"y", **{"Upload-Concat": "final;a b"}),
    ),
    "another protocol version": (
        412,
        lambda w: w.client.patch(
            w.open_url,
            headers={**w.auth, **STREAM, "Tus-Resumable": "0.2.2", "Upload-Offset": "1000"},
            content=b"y",
        ),
    ),
    "no Content-Type of an offset stream": (
        415,
        lambda w: w.client.patch(
            w.open_url, headers={**w.auth, **TUS, "Upload-Offset": "1000"}, content=b"y"
        ),
    ),
    "neither length nor deferred length": (
        400,
        lambda w: w.create({"Upload-Metadata": meta(filename="a")}),
    ),
    "a path for a name": (
        400,
        lambda w: w.create(
            {"Upload-Length": "1", "Upload-Metadata": meta(filename="../../etc/passwd")}
        ),
    ),
    "a control character in a name": (
        400,
        lambda w: w.create({"Upload-Length": "1", "Upload-Metadata": meta(name="a\nb.txt")}),
    ),
    "no name": (
        400,
        lambda w: w.create({"Upload-Length": "1", "Upload-Metadata": meta(kind="input")}),
    ),
    "metadata that is not base64": (
        400,
        lambda w: w.create({"Upload-Length": "1", "Upload-Metadata": "filename !!!"}),
    ),
    "a bad content type": (
        400,
        lambda w: w.create(
            {"Upload-Length": "1", "Upload-Metadata": meta(filename="a", filetype="x y")}
        ),
    ),
    "a bad sha256": (
        400,
        lambda w: w.create(
            {"Upload-Length": "1", "Upload-Metadata": meta(filename="a", sha256="00")}
        ),
    ),
    "PATCH on a finished upload": (409, lambda w: w.patch(w.finished_url, LENGTH, b"y")),
    "PATCH on a terminated upload": (404, lambda w: w.patch(w.terminated_url, 0, b"y")),
    "PATCH on an expired upload": (410, lambda w: w.patch(w.expired_url, 0, b"y")),
    "HEAD of an expired upload": (
        410,
        lambda w: w.client.head(w.expired_url, headers={**w.auth, **TUS}),
    ),
    "another session's token": (
        404,
        lambda w: w.patch(w.open_url, 1000, b"y", **w.other_auth),
    ),
}


@pytest.mark.parametrize("key", list(ATTACKS))
def test_bad_tus_input_is_refused_and_changes_nothing(world: World, key: str) -> None:
    status, send = ATTACKS[key]
    before = state(world)
    response = send(world)
    assert response.status_code == status, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    if response.request.method != "HEAD":
        assert response.json()["error"]["message"]
    assert state(world) == before
    head = world.client.head(world.open_url, headers={**world.auth, **TUS})
    assert head.headers["Upload-Offset"] == str(len(SENT))


def test_the_state_sees_an_appended_byte(world: World) -> None:
    """The guard of the test above: a PATCH that does append is seen."""
    before = state(world)
    assert world.patch(world.open_url, 1000, b"y").status_code == 204
    assert state(world) != before
