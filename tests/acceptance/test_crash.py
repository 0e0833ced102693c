"""Crash safety: SIGKILL the real server mid-upload and mid-close, then restart it."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from ephemera import Settings, Store
from tests.conftest import Server, bearer

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def query(data_dir: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{data_dir / 'ephemera.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def assert_every_ready_artifact_has_its_bytes(data_dir: Path) -> int:
    ready = query(
        data_dir, "select session_id, id, size, sha256 from artifacts where state='ready'"
    )
    for session_id, artifact_id, size, sha256 in ready:
        path = data_dir / "blobs" / "sessions" / str(session_id) / str(artifact_id)
        assert path.is_file(), f"ready artifact {artifact_id} lost its bytes"
        assert path.stat().st_size == size
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    return len(ready)


def staged_bytes(data_dir: Path) -> int:
    staging = data_dir / "blobs" / "staging"
    return sum(p.stat().st_size for p in staging.iterdir()) if staging.exists() else 0


def test_sigkill_during_a_large_streamed_upload(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir).start()
    try:
        with httpx.Client(base_url=server.api, timeout=30) as http:
            created = http.post("/sessions", json={"id": "up"}, headers=server.admin()).json()
            auth = bearer(created["token"])
            done = [
                http.post(
                    "/sessions/up/artifacts",
                    params={"name": f"{i}.bin"},
                    content=bytes([i]) * MiB,
                    headers=auth,
                ).json()
                for i in range(3)
            ]

        def endless() -> Iterator[bytes]:
            for _ in range(1024):  # up to 1 GiB; the server dies long before
                yield b"\xab" * MiB

        uploader = threading.Thread(
            target=lambda: _ignore_transport_errors(
                lambda: httpx.post(
                    f"{server.api}/sessions/up/artifacts",
                    params={"name": "partial.bin"},
                    content=endless(),
                    headers=auth,
                    timeout=60,
                )
            )
        )
        uploader.start()
        deadline = time.monotonic() + 30
        while staged_bytes(data_dir) < 32 * MiB:
            assert time.monotonic() < deadline, "the upload never reached the disk"
            time.sleep(0.01)
        server.kill()
        uploader.join(30)

        # Killed mid-stream: a pending record and staged bytes, nothing ready.
        assert query(data_dir, "select count(*) from artifacts where state='pending'") == [(1,)]
        assert staged_bytes(data_dir) >= 32 * MiB
        assert assert_every_ready_artifact_has_its_bytes(data_dir) == 3

        server = Server(data_dir).start()
        with httpx.Client(base_url=server.api, timeout=30) as http:
            listed = http.get("/sessions/up/artifacts", headers=auth).json()["items"]
            assert [a["id"] for a in listed] == [a["id"] for a in done]
            for artifact in done:
                content = http.get(f"/sessions/up/artifacts/{artifact['id']}/content", headers=auth)
                assert hashlib.sha256(content.content).hexdigest() == artifact["sha256"]
            assert http.get("/sessions/up", headers=auth).json()["artifact_count"] == 3
        assert_every_ready_artifact_has_its_bytes(data_dir)
    finally:
        server.stop()


def test_sigkill_during_a_close_of_a_session_with_many_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    files = 1000
    with Store.open(Settings(data_dir=data_dir)) as store:
        token = store.create_session("many").token
        store.create_session("bystander")
        kept = store.put_artifact("bystander", b"keep me", name="keep.bin")
        for i in range(files):
            store.put_artifact("many", i.to_bytes(4, "big"), name=f"{i}.bin")
    session_dir = data_dir / "blobs" / "sessions" / "many"

    server = Server(data_dir).start()
    try:
        closer = threading.Thread(
            target=lambda: _ignore_transport_errors(
                lambda: httpx.delete(f"{server.api}/sessions/many", headers=bearer(token))
            )
        )
        closer.start()
        deadline = time.monotonic() + 30
        while query(data_dir, "select state from sessions where id='many'") != [("closing",)]:
            assert time.monotonic() < deadline, "the close never started"
            time.sleep(0.001)
        server.kill()
        closer.join(30)

        # Killed between the mark and the end: the session is half closed.
        assert query(data_dir, "select state from sessions where id='many'") == [("closing",)], (
            "the close finished before the kill: nothing was interrupted"
        )
        server = Server(data_dir).start()
        with httpx.Client(base_url=server.api, timeout=30) as http:
            assert http.get("/sessions/many", headers=bearer(token)).status_code == 404
            assert http.get("/sessions/bystander", headers=server.admin()).status_code == 200
        assert not session_dir.exists()
        assert query(data_dir, "select count(*) from sessions where id='many'") == [(0,)]
        assert query(data_dir, "select count(*) from artifacts where session_id='many'") == [(0,)]
        assert query(data_dir, "select id from artifacts") == [(kept.id,)]
        assert_every_ready_artifact_has_its_bytes(data_dir)
    finally:
        server.stop()


def _ignore_transport_errors(call: Callable[[], object]) -> None:
    # The server is killed under the request: a broken connection is the expected outcome.
    with contextlib.suppress(httpx.TransportError):
        call()
