"""End to end over real HTTP: a real `ephemera serve` process on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import random
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import Server, bearer, serving

pytestmark = pytest.mark.slow


def rows_of(data_dir: Path, session_id: str) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{data_dir / 'ephemera.db'}?mode=ro", uri=True)
    try:
        sessions = db.execute("select count(*) from sessions where id = ?", (session_id,))
        artifacts = db.execute("select count(*) from artifacts where session_id = ?", (session_id,))
        return sessions.fetchone()[0], artifacts.fetchone()[0]
    finally:
        db.close()


def test_the_whole_life_of_a_session(server: Server) -> None:
    with httpx.Client(base_url=server.api, timeout=30) as http:
        created = http.post("/sessions", json={"id": "line-4"}, headers=server.admin())
        assert created.status_code == 201
        token = created.json()["token"]
        auth = bearer(token)
        data = random.Random(4).randbytes(3 * 1024 * 1024 + 17)
        digest = hashlib.sha256(data).hexdigest()

        uploads = [
            http.post(
                "/sessions/line-4/artifacts",
                params={"name": "raw.bin"},
                content=data,
                headers={**auth, "content-type": "application/octet-stream"},
            ),
            http.post(
                "/sessions/line-4/artifacts",
                files={"file": ("form.bin", data, "application/octet-stream")},
                headers=auth,
            ),
            http.post(
                "/sessions/line-4/artifacts",
                json={"name": "b64.bin", "data_base64": base64.b64encode(data).decode()},
                headers=auth,
            ),
        ]
        assert [u.status_code for u in uploads] == [201, 201, 201]
        assert {u.json()["sha256"] for u in uploads} == {digest}

        listed = http.get("/sessions/line-4/artifacts", headers=auth).json()["items"]
        assert sorted(a["name"] for a in listed) == ["b64.bin", "form.bin", "raw.bin"]
        for artifact in listed:
            content = http.get(f"/sessions/line-4/artifacts/{artifact['id']}/content", headers=auth)
            assert hashlib.sha256(content.content).hexdigest() == digest
            assert content.headers["etag"] == f'"{digest}"'

        closed = http.delete("/sessions/line-4", headers=auth).json()
        assert (closed["artifact_count"], closed["deleted_bytes"]) == (3, 3 * len(data))

        assert not (server.data_dir / "blobs" / "sessions" / "line-4").exists()
        assert list((server.data_dir / "blobs" / "staging").iterdir()) == []
        assert rows_of(server.data_dir, "line-4") == (0, 0)
        some_id = listed[0]["id"]
        for method, path in [
            ("GET", "/sessions/line-4"),
            ("DELETE", "/sessions/line-4"),
            ("GET", "/sessions/line-4/artifacts"),
            ("POST", "/sessions/line-4/artifacts?name=x"),
            ("GET", f"/sessions/line-4/artifacts/{some_id}"),
            ("GET", f"/sessions/line-4/artifacts/{some_id}/content"),
            ("DELETE", f"/sessions/line-4/artifacts/{some_id}"),
        ]:
            assert http.request(method, path, headers=auth, content=b"x").status_code == 404

        again = http.post("/sessions", json={"id": "line-4"}, headers=server.admin())
        assert again.status_code == 201
        assert again.json()["artifact_count"] == 0
        fresh = bearer(again.json()["token"])
        assert http.get("/sessions/line-4/artifacts", headers=fresh).json()["items"] == []
        assert http.get(f"/sessions/line-4/artifacts/{some_id}", headers=fresh).status_code == 404
        assert http.get("/sessions/line-4", headers=auth).status_code == 404  # old token


@pytest.fixture
def probed_server(tmp_path: Path) -> Iterator[Server]:
    # Thousands of wrong-token probes from one address are, to the server, failed
    # authentications: the limit on them (tested on its own) must not answer them first.
    env = {"EPHEMERA_AUTH_FAILURES_PER_MINUTE": "1000000"}
    with serving(tmp_path / "data", env=env) as running:
        yield running


# 200 small uploads, at most a few in flight per session, on 2 shared cores.
UPLOADS_WITHIN_S = 120


def test_isolation_under_concurrent_interleaved_uploads(probed_server: Server) -> None:
    server = probed_server
    with httpx.Client(
        base_url=server.api, timeout=60, limits=httpx.Limits(max_connections=32)
    ) as http:
        tokens: dict[str, str] = {}
        for i in range(8):
            response = http.post("/sessions", json={"id": f"iso-{i}"}, headers=server.admin())
            tokens[response.json()["id"]] = response.json()["token"]
        jobs = [(sid, n) for sid in tokens for n in range(25)]
        random.Random(8).shuffle(jobs)
        # Every upload is done well within this; an upload slot that is never given back
        # would answer 429 forever.
        deadline = time.monotonic() + UPLOADS_WITHIN_S

        def upload(job: tuple[str, int]) -> tuple[str, dict[str, Any]]:
            sid, n = job
            while True:
                response = http.post(
                    f"/sessions/{sid}/artifacts",
                    params={"name": f"{n}.bin"},
                    content=f"{sid}:{n}:".encode() * 500,
                    headers=bearer(tokens[sid]),
                )
                # More of one session's uploads in flight than it may have: wait as told.
                if response.status_code != 429:
                    break
                wait_s = float(response.headers["retry-after"])
                if time.monotonic() + wait_s > deadline:
                    pytest.fail(
                        f"{sid}/{n}.bin still refused (429) at the {UPLOADS_WITHIN_S} s "
                        f"deadline of all uploads: are upload slots given back? {response.text}"
                    )
                time.sleep(wait_s)
            assert response.status_code == 201, response.text
            return sid, response.json()

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(upload, jobs))

        owned: dict[str, set[str]] = {sid: set() for sid in tokens}
        for sid, artifact in results:
            owned[sid].add(artifact["id"])
        for sid, token in tokens.items():
            listed = http.get(
                f"/sessions/{sid}/artifacts", params={"limit": 100}, headers=bearer(token)
            ).json()["items"]
            assert {a["id"] for a in listed} == owned[sid]
            assert len(listed) == 25

        def probe(args: tuple[str, str, str]) -> list[int]:
            reader, owner, artifact_id = args
            auth = bearer(tokens[reader])
            base = f"/sessions/{owner}/artifacts/{artifact_id}"
            statuses = [
                http.get(base, headers=auth).status_code,
                http.get(f"{base}/content", headers=auth).status_code,
            ]
            # And through the reader's own session path: the artifact is not there either.
            own = f"/sessions/{reader}/artifacts/{artifact_id}"
            statuses.append(http.get(own, headers=auth).status_code)
            return statuses

        probes = [
            (reader, owner, artifact_id)
            for reader in tokens
            for owner in tokens
            if owner != reader
            for artifact_id in owned[owner]
        ]
        with ThreadPoolExecutor(16) as pool:
            statuses = [s for result in pool.map(probe, probes) for s in result]
        assert len(statuses) == 8 * 7 * 25 * 3
        assert set(statuses) == {404}
