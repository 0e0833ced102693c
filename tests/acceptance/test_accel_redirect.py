"""Downloads through nginx with ``EPHEMERA_ACCEL_REDIRECT_PREFIX``: ephemera checks, nginx sends.

A real nginx (tests/nginx.py, the configuration of docs/operations.md) in front of a real
``ephemera serve``. nginx's access log records each request's final URI, so a test can tell
bytes nginx sent from its internal location from bytes ephemera streamed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import Server, bearer, serving
from tests.nginx import ACCEL_PREFIX, Nginx, nginx_binary

pytestmark = pytest.mark.slow

BODY = os.urandom(3 * 1024 * 1024 + 17)


@dataclass
class Front:
    server: Server
    nginx: Nginx
    http: httpx.Client

    def blob(self, sid: str, aid: str) -> Path:
        return self.server.data_dir / "blobs" / "sessions" / sid / aid

    def redirected(self, sid: str, aid: str) -> list[str]:
        """The access log lines of requests nginx answered from the artifact's file."""
        return [
            line for line in self.nginx.served() if f"{ACCEL_PREFIX}/sessions/{sid}/{aid}" in line
        ]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """One server and one nginx for the module: each test works in sessions of its own."""
    binary = nginx_binary()
    tmp_path = tmp_path_factory.mktemp("accel")
    env = {"EPHEMERA_ACCEL_REDIRECT_PREFIX": ACCEL_PREFIX}
    with serving(tmp_path / "data", env) as server:
        run_dir = tmp_path / "nginx"
        run_dir.mkdir()
        nginx = Nginx(binary, run_dir, server.port, server.data_dir / "blobs").start()
        try:
            with httpx.Client(base_url=nginx.url, timeout=30) as http:
                yield Front(server, nginx, http)
        finally:
            nginx.stop()


def upload(
    front: Front, body: bytes = BODY, name: str = "scan.png"
) -> tuple[str, str, dict[str, str]]:
    created = front.http.post("/api/v1/sessions", json={}, headers=front.server.admin())
    assert created.status_code == 201, created.text
    sid, auth = created.json()["id"], bearer(created.json()["token"])
    stored = front.http.post(
        f"/api/v1/sessions/{sid}/artifacts",
        params={"name": name},
        content=body,
        headers={**auth, "Content-Type": "image/png"},
    )
    assert stored.status_code == 201, stored.text
    return sid, stored.json()["id"], auth


def content(sid: str, aid: str) -> str:
    return f"/api/v1/sessions/{sid}/artifacts/{aid}/content"


def test_the_right_token_gets_the_exact_bytes_sent_by_nginx_with_ephemeras_headers(
    front: Front,
) -> None:
    sid, aid, auth = upload(front)

    got = front.http.get(content(sid, aid), headers=auth)

    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(BODY).hexdigest()
    assert got.headers["content-length"] == str(len(BODY))
    assert got.headers["etag"] == f'"{hashlib.sha256(BODY).hexdigest()}"'
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-disposition"].startswith('attachment; filename="scan.png"')
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"] == "sandbox"
    assert got.headers["cache-control"] == "private, no-cache"
    assert "x-accel-redirect" not in got.headers
    assert "last-modified" not in got.headers
    assert [line.split()[0] for line in front.redirected(sid, aid)] == ["200"]


def test_a_wrong_token_gets_404_and_no_byte(front: Front) -> None:
    sid, aid, _ = upload(front)
    _, _, other_auth = upload(front, b"other")

    for headers in (other_auth, bearer("not-a-token")):
        got = front.http.get(content(sid, aid), headers=headers)
        assert got.status_code == 404
        assert got.json()["error"]["code"] == "not_found"
    assert front.http.get(content(sid, aid)).status_code == 401
    assert front.redirected(sid, aid) == []


def test_ranges_are_decided_by_ephemera_and_sent_by_nginx(front: Front) -> None:
    sid, aid, auth = upload(front)
    etag = f'"{hashlib.sha256(BODY).hexdigest()}"'

    part = front.http.get(content(sid, aid), headers={**auth, "Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == BODY[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(BODY)}"
    assert part.headers["etag"] == etag

    tail = front.http.get(
        content(sid, aid), headers={**auth, "Range": "bytes=-10", "If-Range": etag}
    )
    assert (tail.status_code, tail.content) == (206, BODY[-10:])
    # An If-Range that names other bytes gets the whole body, as ephemera answers it alone.
    stale = front.http.get(
        content(sid, aid), headers={**auth, "Range": "bytes=0-9", "If-Range": '"stale"'}
    )
    assert (stale.status_code, len(stale.content)) == (200, len(BODY))
    # Several ranges get the whole body too (ephemera never answers multipart/byteranges).
    several = front.http.get(content(sid, aid), headers={**auth, "Range": "bytes=0-1,5-6"})
    assert (several.status_code, several.content) == (200, BODY)
    assert (
        front.http.get(content(sid, aid), headers={**auth, "If-None-Match": etag}).status_code
        == 304
    )
    # Preconditions nginx would judge on its own (412 even for the right ETag) stay with
    # ephemera, which serves the body.
    for precondition in (
        {"If-Match": etag},
        {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
    ):
        kept = front.http.get(content(sid, aid), headers={**auth, **precondition})
        assert (kept.status_code, kept.content) == (200, BODY)
    beyond = front.http.get(content(sid, aid), headers={**auth, "Range": f"bytes={len(BODY)}-"})
    assert beyond.status_code == 416
    assert [line.split()[0] for line in front.redirected(sid, aid)] == ["206", "206", "200", "200"]


def test_a_flagged_artifact_is_never_redirected(front: Front) -> None:
    sid, aid, auth = upload(front)
    path = front.blob(sid, aid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))
    verified = front.http.post("/api/v1/admin/verify", headers=front.server.admin())
    assert verified.json()["corrupt_count"] == 1

    for headers in ({}, {"Range": "bytes=0-9"}):
        got = front.http.get(content(sid, aid), headers={**auth, **headers})
        assert got.status_code == 500
        assert got.json()["error"]["code"] == "artifact_corrupt"
        assert "etag" not in got.headers
    assert front.redirected(sid, aid) == []


def test_a_file_whose_size_differs_from_its_record_is_streamed_with_verification(
    front: Front,
) -> None:
    sid, aid, auth = upload(front)
    with front.blob(sid, aid).open("ab") as grown:
        grown.write(b"appended at rest")

    with pytest.raises(httpx.HTTPError):
        # The verifying stream cuts the connection before its last chunk.
        front.http.get(content(sid, aid), headers=auth).read()

    assert front.redirected(sid, aid) == []
    meta = front.http.get(f"/api/v1/sessions/{sid}/artifacts/{aid}", headers=auth).json()
    assert meta["integrity"] == "corrupt"


def test_the_internal_location_is_not_reachable_from_outside(front: Front) -> None:
    sid, aid, _ = upload(front)
    assert front.blob(sid, aid).is_file()

    for path in (f"{ACCEL_PREFIX}/sessions/{sid}/{aid}", f"{ACCEL_PREFIX}/"):
        got = front.http.get(path)
        assert got.status_code == 404
        assert BODY[:64] not in got.content


def test_only_requests_the_proxy_marks_are_redirected(front: Front) -> None:
    sid, aid, auth = upload(front)
    direct = httpx.Client(base_url=front.server.url, timeout=30)
    with direct:
        # Past the proxy (a worker on the same host, a health probe): the bytes, streamed.
        streamed = direct.get(content(sid, aid), headers=auth)
        assert streamed.content == BODY
        assert "x-accel-redirect" not in streamed.headers

        marked = direct.get(
            content(sid, aid), headers={**auth, "X-Sendfile-Type": "X-Accel-Redirect"}
        )
        assert marked.status_code == 200
        assert marked.content == b""
        assert marked.headers["x-accel-redirect"] == f"{ACCEL_PREFIX}/sessions/{sid}/{aid}"
        assert marked.headers["etag"] == f'"{hashlib.sha256(BODY).hexdigest()}"'
