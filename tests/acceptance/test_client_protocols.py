"""The client's protocols against a real `ephemera serve`: waiting for a task over live
events, an event stream resumed after its connection is cut, signed links fetched without
credentials, and an upload retried under an Idempotency-Key after its answer was lost."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx2
import pytest

from ephemera.client import AsyncClient, Client
from ephemera.errors import LinkRefused
from ephemera.models import Event, Task, TaskState
from tests.acceptance.test_tasks_http import create_session, upload
from tests.conftest import WITH_SAMPLES_ENV, Server, _die_with_parent, serving
from tests.images import inspection_scene, png
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a server. ``cut_first_answer``: the first
    connection's request reaches the server whole, but its answer is dropped (the client
    sees the connection close). ``cut_first_request_after``: the first connection is closed
    once that many bytes of its request were passed on (the server never gets the rest).
    :meth:`cut` closes every connection open now."""

    def __init__(
        self,
        port: int,
        *,
        cut_first_answer: bool = False,
        cut_first_request_after: int | None = None,
    ) -> None:
        self.target = port
        self.cut_first_answer = cut_first_answer
        self.cut_first_request_after = cut_first_request_after
        self.answers_cut = 0
        self.requests_cut = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        first = True
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._open += [client, server]
            drop = first and self.cut_first_answer
            limit = self.cut_first_request_after if first else None
            first = False
            threading.Thread(
                target=self._pipe, args=(client, server, False, limit), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(server, client, drop, None), daemon=True
            ).start()

    def _pipe(
        self, source: socket.socket, dest: socket.socket, drop: bool, limit: int | None
    ) -> None:
        passed = 0
        try:
            while data := source.recv(65536):
                if drop:
                    # The server has answered, so it had the whole request: lose the answer.
                    self.answers_cut += 1
                    break
                if limit is not None and passed + len(data) >= limit:
                    dest.sendall(data[: limit - passed])
                    self.requests_cut += 1
                    break
                dest.sendall(data)
                passed += len(data)
        except OSError:
            pass
        for end in (source, dest):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def cut(self) -> None:
        with self._lock:
            doomed, self._open = self._open, []
        for conn in doomed:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**WITH_SAMPLES_ENV, "EPHEMERA_EVENT_PING_S": "0.5"}
    with serving(tmp_path_factory.mktemp("protocols") / "data", env) as running:
        yield running


@pytest.fixture
def server_without_workers(tmp_path: Path) -> Iterator[Server]:
    env = {**WITH_SAMPLES_ENV, "EPHEMERA_WORKERS": "0", "EPHEMERA_EVENT_POLL_S": "0.2"}
    with serving(tmp_path / "data", env) as running:
        yield running


def start_worker(data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ephemera", "worker", "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **WITH_SAMPLES_ENV},
            preexec_fn=_die_with_parent,
        )


def test_wait_task_reports_each_step_of_a_3_region_roi_compare_in_order(
    server_without_workers: Server, tmp_path: Path
) -> None:
    server = server_without_workers
    scene = inspection_scene(seed=5)
    token = create_session(server, "wait-roi")
    names = sorted(scene.boxes)[:3]
    goldens = {
        n: upload(server, "wait-roi", token, f"g-{n}.png", png(scene.golden(n))) for n in names
    }
    capture = upload(server, "wait-roi", token, "c.png", png(scene.with_defect("r1")))
    regions = [
        {"name": n, "box": scene.box(n), "goldens": [goldens[n]], "threshold": 0.9} for n in names
    ]
    seen: list[Task] = []
    requests: list[str] = []
    hooks = {"request": [lambda r: requests.append(f"{r.method} {r.url.path}")]}
    with Client(server.url, token) as client:
        client._http.event_hooks = hooks
        task = client.submit_task(
            "wait-roi",
            "roi-compare",
            [capture, *goldens.values()],
            {"capture": capture, "regions": regions},
        )
        outcome: list[Task | BaseException] = []

        def wait() -> None:
            try:
                outcome.append(client.wait_task("wait-roi", task.id, on_progress=seen.append))
            except BaseException as exc:  # handed to the test's thread
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        # Nothing runs the task until the waiter has subscribed and had its first look.
        wait_for(lambda: len(seen) == 1, 30, "the waiter's first look at the task")
        worker = start_worker(server.data_dir, tmp_path / "worker.log")
        try:
            waiter.join(60)
        finally:
            worker.terminate()
            worker.wait(15)

    [done] = outcome
    assert isinstance(done, Task), done
    assert done.state is TaskState.SUCCEEDED
    assert done.outputs
    steps = [(t.state.value, t.progress_done, t.progress_total) for t in seen]
    print(f"\non_progress saw: {steps}")
    assert steps[0][0] == "pending"
    running = [(done_, total) for state, done_, total in steps if state == "running"]
    assert [r for r in running if r[1] is not None] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert steps[-1] == ("succeeded", 3, 3)
    # It followed the events: one stream, and no polling of the task between steps.
    task_reads = [r for r in requests if r.endswith(f"/tasks/{task.id}")]
    assert requests.count("GET /api/v1/sessions/wait-roi/events") == 1
    assert len(task_reads) <= 3, task_reads  # the first look, then running, then succeeded


class Stalled(Exception):
    pass


def collect(events: Iterator[Event], count: int, within_s: int = 20) -> list[Event]:
    """The next ``count`` events; Stalled if they do not come (a stream that lost them)."""

    def stalled(*_: object) -> None:
        raise Stalled(f"fewer than {count} events within {within_s} s")

    previous = signal.signal(signal.SIGALRM, stalled)
    signal.alarm(within_s)
    try:
        return [next(events) for _ in range(count)]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_stream_cut_mid_way_resumes_without_gap_or_duplicate(
    server: Server, admin: Client
) -> None:
    token = admin.create_session("cut-stream").token
    proxy = CuttingProxy(server.port)
    try:
        with (
            Client(f"http://127.0.0.1:{proxy.port}", token) as through_proxy,
            through_proxy.events("cut-stream") as stream,
        ):
            events = iter(stream)
            first = [upload(server, "cut-stream", token, f"{n}.txt", b"x") for n in "ab"]
            before = collect(events, 2)
            proxy.cut()  # the stream's connection dies
            missed = [upload(server, "cut-stream", token, f"{n}.txt", b"y") for n in "cd"]
            admin.delete_artifact("cut-stream", first[0])
            after = collect(events, 3)  # resumed after the last event received
            admin.close_session("cut-stream")
            after += collect(events, 2)
            assert next(events, None) is None  # the stream ends after session.closed
    finally:
        proxy.close()

    assert [e.data["artifact_id"] for e in before] == first
    kinds = [e.type for e in after]
    assert kinds[:3] == ["artifact.created", "artifact.created", "artifact.deleted"]
    assert [e.data["artifact_id"] for e in after[:2]] == missed
    assert kinds[3:] == ["session.closing", "session.closed"]
    ids = [e.id for e in before + after]
    assert ids == sorted(set(ids)), "each event once, in order"


def test_a_signed_link_downloads_with_a_plain_client_and_no_credentials(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    token = admin.create_session("linked").token
    data = os.urandom(300_000)
    with Client(server.url, token) as client:
        artifact = client.upload_artifact("linked", data, name="scan.bin")
        link = client.link("linked", artifact.id, 60, disposition="inline")
    assert link.expires_at > artifact.created_at

    plain = httpx2.get(link.url)  # no Authorization header at all
    assert plain.status_code == 200
    assert plain.content == data
    assert plain.headers["content-disposition"].startswith("inline")
    with Client(server.url) as nobody:
        assert nobody.download_link(link.url, tmp_path / "copy").read_bytes() == data

    # The link keys: rotate, list, revoke; a revoked key's link is refused.
    rotated = admin.rotate_link_key()
    keys = admin.list_link_keys()
    assert keys[0].id == rotated.id
    assert all(k.revoked_at is None for k in keys)
    for key in keys:
        admin.revoke_link_key(key.id)
    assert all(k.revoked_at is not None for k in admin.list_link_keys())
    with Client(server.url) as nobody, pytest.raises(LinkRefused):
        nobody.download_link(link.url, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_an_upload_whose_answer_is_lost_is_retried_under_its_key_and_stored_once(
    server: Server, admin: Client
) -> None:
    token = admin.create_session("retried").token
    data = os.urandom(2 * 1024 * 1024)
    proxy = CuttingProxy(server.port, cut_first_answer=True)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", token) as client:
            stored = client.upload_artifact(
                "retried", data, name="scan.bin", idempotency_key="scan-0001"
            )
    finally:
        proxy.close()

    assert proxy.answers_cut == 1  # the first attempt was made, stored, and its answer lost
    [only] = admin.list_artifacts("retried")
    assert only.id == stored.id
    assert only.sha256 == stored.sha256 == hashlib.sha256(data).hexdigest()


def test_an_upload_cut_half_way_is_sent_again_whole_from_its_file(
    server: Server, admin: Client
) -> None:
    token = admin.create_session("resent").token
    data = os.urandom(2 * 1024 * 1024)
    proxy = CuttingProxy(server.port, cut_first_request_after=1024 * 1024)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", token) as client:
            stored = client.upload_artifact(
                "resent", io.BytesIO(data), name="scan.bin", idempotency_key="scan-0002"
            )
    finally:
        proxy.close()

    assert proxy.requests_cut == 1
    [only] = admin.list_artifacts("resent")
    assert only.id == stored.id
    assert admin.read_artifact("resent", only.id) == data


@pytest.mark.parametrize("cut", ["answer", "request"])
def test_the_async_client_retries_a_file_upload_under_its_key_and_follows_events(
    server: Server, admin: Client, tmp_path: Path, cut: str
) -> None:
    """Cut after the server stored it (the retry is answered the first answer), or half-way
    through the body (the server stored nothing: the retry sends the file again, whole)."""
    sid = f"async-{cut}"
    token = admin.create_session(sid).token
    source = tmp_path / "scan.bin"
    source.write_bytes(os.urandom(1024 * 1024))
    if cut == "answer":
        proxy = CuttingProxy(server.port, cut_first_answer=True)
    else:
        proxy = CuttingProxy(server.port, cut_first_request_after=512 * 1024)

    async def run() -> tuple[str, list[Event]]:
        async with (
            AsyncClient(f"http://127.0.0.1:{proxy.port}", token) as cut_once,
            AsyncClient(server.url, token) as direct,
            direct.events(sid, last_event_id=0) as events,
        ):
            stored = await cut_once.upload_artifact(sid, source, idempotency_key="async-scan-1")
            await direct.close_session(sid)
            return stored.id, [event async for event in events]

    try:
        stored_id, seen = asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        proxy.close()

    assert proxy.answers_cut + proxy.requests_cut == 1
    # From the session's start to its end: one artifact, created once, then the close.
    kinds = [e.type for e in seen]
    assert kinds == ["session.opened", "artifact.created", "session.closing", "session.closed"]
    assert seen[1].data["artifact_id"] == stored_id
    assert seen[1].data["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
