"""Idempotency-Key against a real `ephemera serve`, on SQLite and on PostgreSQL: retries after
a dropped connection, other requests under a used key, and duplicates sent at once."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import WITH_SAMPLES_ENV, Server, bearer, serving
from tests.databases import PostgresDatabases

pytestmark = pytest.mark.slow

KEY = "Idempotency-Key"


@pytest.fixture(params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases
) -> Iterator[Server]:
    env = {**WITH_SAMPLES_ENV, "EPHEMERA_WORKERS": "0"}
    url = None
    if request.param == "postgresql":
        url = postgres_databases.fresh()
        env["EPHEMERA_DATABASE_URL"] = url
    with serving(tmp_path / "data", env) as running:
        yield running
        if url is not None:
            postgres_databases.drop(url)


def open_session(server: Server) -> tuple[str, str]:
    answer = httpx.post(f"{server.api}/sessions", json={}, headers=server.admin())
    assert answer.status_code == 201, answer.text
    return answer.json()["id"], answer.json()["token"]


def artifacts(server: Server, sid: str, token: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.api}/sessions/{sid}/artifacts", headers=bearer(token))
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def until_answered(send: Callable[[], httpx.Response]) -> httpx.Response:
    """Send until the answer is not 409 (the first request still running), as a client
    honouring Retry-After does."""
    deadline = time.monotonic() + 30
    while True:
        answer = send()
        if answer.status_code != 409 or time.monotonic() > deadline:
            return answer
        time.sleep(float(answer.headers["retry-after"]))


def send_and_drop(
    server: Server, path: str, headers: dict[str, str], body: bytes, wait_s: float
) -> None:
    """Send a whole request on a raw socket, then close it without reading the answer."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall("\r\n".join(lines).encode() + body)
        time.sleep(wait_s)


@pytest.mark.parametrize("wait_s", [0.0, 1.0], ids=["closed-at-once", "closed-after-commit"])
def test_an_upload_retried_after_a_dropped_connection_yields_one_artifact(
    server: Server, wait_s: float
) -> None:
    sid, token = open_session(server)
    data = os.urandom(4 * 1024 * 1024)
    headers = {
        "Authorization": f"Bearer {token}",
        KEY: "upload-7",
        "Content-Type": "application/octet-stream",
    }
    send_and_drop(server, f"/api/v1/sessions/{sid}/artifacts?name=scan.bin", headers, data, wait_s)
    retry = until_answered(
        lambda: httpx.post(
            f"{server.api}/sessions/{sid}/artifacts",
            params={"name": "scan.bin"},
            content=data,
            headers=headers,
            timeout=30,
        )
    )
    assert retry.status_code == 201, retry.text
    stored = artifacts(server, sid, token)
    assert [a["id"] for a in stored] == [retry.json()["id"]]
    assert stored[0]["sha256"] == hashlib.sha256(data).hexdigest()
    if wait_s:
        # The first request was answered (to nobody): this is its answer again.
        assert retry.headers["idempotent-replayed"] == "true"


def test_task_submission_and_session_creation_are_done_once_per_key(server: Server) -> None:
    sid, token = open_session(server)
    aid = httpx.post(
        f"{server.api}/sessions/{sid}/artifacts",
        params={"name": "a.txt"},
        content=b"abc",
        headers=bearer(token),
    ).json()["id"]
    tasks_url = f"{server.api}/sessions/{sid}/tasks"
    task = {"processor": "sample-upper", "inputs": [aid]}
    first = httpx.post(tasks_url, json=task, headers={**bearer(token), KEY: "t-1"})
    again = httpx.post(tasks_url, json=task, headers={**bearer(token), KEY: "t-1"})
    other = httpx.post(
        tasks_url, json={**task, "params": {"suffix": "!"}}, headers={**bearer(token), KEY: "t-1"}
    )
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
    assert again.json()["id"] == first.json()["id"]
    listed = httpx.get(tasks_url, headers=bearer(token)).json()["items"]
    assert [t["id"] for t in listed] == [first.json()["id"]]

    sessions_url = f"{server.api}/sessions"
    headers = {**server.admin(), KEY: "s-1"}
    made = httpx.post(sessions_url, json={"label": "line 3"}, headers=headers)
    remade = httpx.post(sessions_url, json={"label": "line 3"}, headers=headers)
    changed = httpx.post(sessions_url, json={"label": "line 4"}, headers=headers)
    assert (made.status_code, remade.status_code, changed.status_code) == (201, 201, 422)
    assert remade.json() == made.json()
    assert session_count(server) == 2  # the first session above, and this one


def session_count(server: Server) -> int:
    answer = httpx.get(f"{server.api}/admin/sessions", headers=server.admin())
    assert answer.status_code == 200, answer.text
    return len(answer.json()["items"])


def at_once(count: int, send: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """``count`` threads send the same request at the same instant."""
    start = threading.Barrier(count)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        start.wait()
        answer = send()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == count
    return answers


def only_one(answers: list[httpx.Response]) -> str:
    """The one resource the answers name: each is it (201) or 409 to be retried."""
    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers]
    created = {str(a.json()["id"]) for a in answers if a.status_code == 201}
    assert len(created) == 1, created
    for busy in (a for a in answers if a.status_code == 409):
        assert busy.headers["retry-after"] == "1"
    return created.pop()


def test_duplicates_sent_at_once_create_exactly_one_resource(server: Server) -> None:
    sid, token = open_session(server)
    data = os.urandom(1024 * 1024)
    uploaded = at_once(
        8,
        lambda: httpx.post(
            f"{server.api}/sessions/{sid}/artifacts",
            params={"name": "same.bin"},
            content=data,
            headers={**bearer(token), KEY: "dup-upload"},
            timeout=30,
        ),
    )
    aid = only_one(uploaded)
    assert [a["id"] for a in artifacts(server, sid, token)] == [aid]

    tasks_url = f"{server.api}/sessions/{sid}/tasks"
    submitted = at_once(
        8,
        lambda: httpx.post(
            tasks_url,
            json={"processor": "sample-upper", "inputs": [aid]},
            headers={**bearer(token), KEY: "dup-task"},
            timeout=30,
        ),
    )
    tid = only_one(submitted)
    listed = httpx.get(tasks_url, headers=bearer(token)).json()["items"]
    assert [t["id"] for t in listed] == [tid]

    before = session_count(server)
    created = at_once(
        8,
        lambda: httpx.post(
            f"{server.api}/sessions",
            json={"label": "once"},
            headers={**server.admin(), KEY: "dup-session"},
            timeout=30,
        ),
    )
    only_one(created)
    assert session_count(server) == before + 1


def test_a_retry_of_an_answered_upload_takes_no_upload_slot(tmp_path: Path) -> None:
    env = {"EPHEMERA_WORKERS": "0", "EPHEMERA_MAX_CONCURRENT_UPLOADS": "1"}
    server = Server(tmp_path / "data", env).start()
    try:
        sid, token = open_session(server)
        url = f"{server.api}/sessions/{sid}/artifacts"
        keyed = {**bearer(token), KEY: "scan-1"}
        first = httpx.post(url, params={"name": "a.bin"}, content=b"the bytes", headers=keyed)
        assert first.status_code == 201, first.text
        # Another upload whose body trickles in holds the session's only slot.
        head = (
            f"POST /api/v1/sessions/{sid}/artifacts?name=slow.bin HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 1000\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port)) as slow:
            slow.sendall(head.encode() + b"x" * 10)
            deadline = time.monotonic() + 10
            while True:
                busy = httpx.post(
                    url, params={"name": "b.bin"}, content=b"b", headers=bearer(token)
                )
                if busy.status_code == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert busy.status_code == 429, busy.text
            # The retry stores nothing (its body is only hashed): it is answered all the same.
            again = httpx.post(url, params={"name": "a.bin"}, content=b"the bytes", headers=keyed)
            assert (again.status_code, again.json()) == (201, first.json())
            assert again.headers["idempotent-replayed"] == "true"
    finally:
        server.stop()
