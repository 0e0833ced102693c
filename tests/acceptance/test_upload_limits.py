"""Stalled upload bodies and uploads in flight, against a real `ephemera serve` over raw sockets."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import Server, bearer, serving
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

IDLE_TIMEOUT_S = 2
SLOTS = 2
MAX_UPLOAD = 64 * 1024
BODY = b"\x5a" * 4000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "EPHEMERA_UPLOAD_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        "EPHEMERA_MAX_CONCURRENT_UPLOADS": str(SLOTS),
        "EPHEMERA_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "EPHEMERA_SCHEDULED_CLEANUP": "false",
        "EPHEMERA_WORKERS": "0",
    }
    with serving(Path(tmp_path_factory.mktemp("uploads")) / "data", env) as running:
        yield running


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api, timeout=30) as client:
        yield client


@pytest.fixture
def new_session(server: Server, http: httpx.Client) -> Callable[[], tuple[str, str]]:
    def create() -> tuple[str, str]:
        created = http.post("/sessions", json={}, headers=server.admin())
        assert created.status_code == 201, created.text
        return created.json()["id"], created.json()["token"]

    return create


# -- raw HTTP/1.1 over a socket ---------------------------------------------------------------

_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def multipart_body(data: bytes) -> bytes:
    return (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="stalled.bin"\r\n\r\n'
        + data
        + b"\r\n--b0undary--\r\n"
    )


def json_body(data: bytes) -> bytes:
    return json.dumps(
        {"name": "stalled.bin", "data_base64": base64.b64encode(data).decode()}
    ).encode()


BODY_KINDS: dict[str, tuple[str, bytes]] = {
    "raw": ("application/octet-stream", BODY),
    "multipart": ("multipart/form-data; boundary=b0undary", multipart_body(BODY)),
    "json": ("application/json", json_body(BODY)),
}


def open_upload(
    server: Server, sid: str, token: str, kind: str, sent: float = 0.5
) -> socket.socket:
    """Send the headers and the first ``sent`` of the body, then leave the socket as it is."""
    content_type, body = BODY_KINDS[kind]
    head = (
        f"POST /api/v1/sessions/{sid}/artifacts?name=stalled.bin HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    _opened.append(sock)
    sock.sendall(head + body[: int(len(body) * sent)])
    return sock


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool

    def error(self) -> dict[str, str]:
        assert self.headers["content-type"] == "application/json", self.headers
        return dict(json.loads(self.body)["error"])


def read_answer(sock: socket.socket, deadline: float) -> Answer:
    """Read one response; ``closed`` says whether the server then closed the connection."""
    data = b""
    closed = False
    with sock:
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep and not closed:
                length = _content_length(head)
                if length is not None and len(rest) >= length and not _says_close(head):
                    break
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head, "no answer before the deadline"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return Answer(int(status_line.split()[1]), headers, rest, closed)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def _says_close(head: bytes) -> bool:
    return b"\r\nconnection: close" in head.lower()


# -- what the server holds --------------------------------------------------------------------


def staged(server: Server) -> list[Path]:
    staging = server.data_dir / "blobs" / "staging"
    return list(staging.iterdir()) if staging.exists() else []


def pending_rows(server: Server, http: httpx.Client) -> int:
    stats = http.get("/admin/cleanup/stats", headers=server.admin())
    assert stats.status_code == 200, stats.text
    return sum(row["count"] for row in stats.json()["artifacts"] if row["state"] == "pending")


def upload(http: httpx.Client, sid: str, token: str, **kwargs: object) -> httpx.Response:
    params = kwargs.pop("params", {"name": "a.bin"})
    content = kwargs.pop("content", b"a")
    return http.post(
        f"/sessions/{sid}/artifacts",
        params=params,  # type: ignore[arg-type]
        content=content,  # type: ignore[arg-type]
        headers=bearer(token),
    )


def upload_soon(http: httpx.Client, sid: str, token: str) -> httpx.Response:
    """An upload, retried while the session's slots are busy (up to a deadline)."""
    deadline = time.monotonic() + 15
    while True:
        response = upload(http, sid, token)
        if response.status_code != 429 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


# -- the body idle timeout --------------------------------------------------------------------


def test_fifty_stalled_uploads_are_answered_408_and_leave_nothing_behind(
    server: Server, http: httpx.Client, new_session: Callable[[], tuple[str, str]]
) -> None:
    kinds = list(BODY_KINDS)
    sessions = [new_session() for _ in range(50 // SLOTS)]
    started = time.monotonic()
    sockets = [
        open_upload(server, sid, token, kinds[(i * SLOTS + j) % len(kinds)])
        for i, (sid, token) in enumerate(sessions)
        for j in range(SLOTS)
    ]
    assert len(sockets) == 50
    # The stalls hold staging files and pending records until the timeout takes them.
    wait_for(
        lambda: len(staged(server)) > 0 and pending_rows(server, http) > 0,
        10,
        "staged bytes and pending records of the stalled uploads",
    )

    deadline = time.monotonic() + IDLE_TIMEOUT_S + 20
    answers = [read_answer(sock, deadline) for sock in sockets]

    assert [a.status for a in answers] == [408] * 50
    assert time.monotonic() - started >= IDLE_TIMEOUT_S
    assert {a.error()["code"] for a in answers} == {"request_timeout"}
    assert all(a.error()["message"] for a in answers)
    assert all(a.headers["connection"] == "close" and a.closed for a in answers)
    assert staged(server) == []
    assert pending_rows(server, http) == 0
    for sid, token in sessions:
        listed = http.get(f"/sessions/{sid}/artifacts", headers=bearer(token)).json()
        assert listed["items"] == []


def open_json_request(server: Server, method: str, path: str, token: str | None) -> socket.socket:
    """Send the headers of a JSON request and half its body, then leave the socket as it is."""
    body = json.dumps({"label": "never finished"}).encode()
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"{method} /api/v1{path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n{authorization}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    _opened.append(sock)
    sock.sendall(head + body[: len(body) // 2])
    return sock


def test_stalled_json_bodies_are_answered_408_before_any_authentication(
    server: Server, http: httpx.Client, new_session: Callable[[], tuple[str, str]]
) -> None:
    sid, token = new_session()
    sockets = [
        open_json_request(server, "POST", "/sessions", None),  # anonymous
        open_json_request(server, "PATCH", f"/sessions/{sid}", token),
        open_json_request(server, "POST", "/worker/claim", None),
    ]
    deadline = time.monotonic() + IDLE_TIMEOUT_S + 20
    answers = [read_answer(sock, deadline) for sock in sockets]
    assert [a.status for a in answers] == [408, 408, 408]
    assert {a.error()["code"] for a in answers} == {"request_timeout"}
    assert all(a.headers["connection"] == "close" and a.closed for a in answers)
    session = http.get(f"/sessions/{sid}", headers=bearer(token)).json()
    assert session["label"] is None


@pytest.mark.parametrize("kind", list(BODY_KINDS))
def test_a_body_that_keeps_trickling_is_not_timed_out(
    server: Server, http: httpx.Client, new_session: Callable[[], tuple[str, str]], kind: str
) -> None:
    """The timeout is per receive: a slow body whose bytes keep coming is received whole."""
    sid, token = new_session()
    sock = open_upload(server, sid, token, kind, sent=0)
    _, body = BODY_KINDS[kind]
    pieces = 5
    step = len(body) // pieces + 1
    for i in range(0, len(body), step):
        sock.sendall(body[i : i + step])
        time.sleep(IDLE_TIMEOUT_S * 0.4)  # the whole body takes longer than the timeout
    answer = read_answer(sock, time.monotonic() + 20)
    assert answer.status == 201, answer.body
    assert json.loads(answer.body)["size"] == len(BODY)


# -- uploads in flight per session ------------------------------------------------------------


def test_an_upload_beyond_the_sessions_slots_is_429_and_stores_nothing(
    server: Server, http: httpx.Client, new_session: Callable[[], tuple[str, str]]
) -> None:
    sid, token = new_session()
    stalls = [open_upload(server, sid, token, "raw") for _ in range(SLOTS)]
    wait_for(lambda: pending_rows(server, http) == SLOTS, 15, f"{SLOTS} pending records")
    staged_before = sorted(staged(server))

    refused = upload(http, sid, token, params={"name": "one-too-many.bin"})

    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert pending_rows(server, http) == SLOTS
    assert sorted(staged(server)) == staged_before
    # Slots are the session's own: another session uploads meanwhile.
    other_sid, other_token = new_session()
    assert upload(http, other_sid, other_token).status_code == 201

    deadline = time.monotonic() + IDLE_TIMEOUT_S + 20
    assert [read_answer(s, deadline).status for s in stalls] == [408] * SLOTS
    assert upload(http, sid, token).status_code == 201
    names = [
        a["name"]
        for a in http.get(f"/sessions/{sid}/artifacts", headers=bearer(token)).json()["items"]
    ]
    assert names == ["a.bin"]


def _succeed(server: Server, http: httpx.Client, sid: str, token: str) -> None:
    assert upload(http, sid, token, params={"name": "ok.bin"}).status_code == 201


def _refuse_the_name(server: Server, http: httpx.Client, sid: str, token: str) -> None:
    response = upload(http, sid, token, params={"name": "../x"})
    assert response.status_code == 422, response.text


def _exceed_the_limit(server: Server, http: httpx.Client, sid: str, token: str) -> None:
    response = upload(http, sid, token, content=iter([b"x" * 4096] * (MAX_UPLOAD // 4096 + 2)))
    assert response.status_code == 413, response.text


def _mismatch_the_checksum(server: Server, http: httpx.Client, sid: str, token: str) -> None:
    response = upload(http, sid, token, params={"name": "a.bin", "sha256": "0" * 64})
    assert response.status_code == 400, response.text


def _disconnect(server: Server, http: httpx.Client, sid: str, token: str) -> None:
    staged_before = len(staged(server))
    sock = open_upload(server, sid, token, "multipart")
    wait_for(lambda: len(staged(server)) > staged_before, 15, "the upload's staged file")
    sock.close()
    wait_for(lambda: len(staged(server)) == staged_before, 15, "the staged file to go")


def _time_out(server: Server, http: httpx.Client, sid: str, token: str) -> None:
    sock = open_upload(server, sid, token, "raw")
    assert read_answer(sock, time.monotonic() + IDLE_TIMEOUT_S + 20).status == 408


ENDINGS: dict[str, Callable[[Server, httpx.Client, str, str], None]] = {
    "success": _succeed,
    "refused-name": _refuse_the_name,
    "too-large": _exceed_the_limit,
    "checksum-mismatch": _mismatch_the_checksum,
    "client-disconnect": _disconnect,
    "body-timeout": _time_out,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_slot_comes_back_however_the_upload_ends(
    server: Server,
    http: httpx.Client,
    new_session: Callable[[], tuple[str, str]],
    ending: str,
) -> None:
    sid, token = new_session()
    for _ in range(SLOTS):  # had one slot leaked each time, none would be left
        ENDINGS[ending](server, http, sid, token)
    assert upload_soon(http, sid, token).status_code == 201
