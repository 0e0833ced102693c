"""Live events over real HTTP from a real `ephemera serve`: Server-Sent Events, read by a
plain HTTP client as a browser's EventSource would."""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.acceptance.test_tasks_http import create_session, upload, wait_for_task
from tests.conftest import WITH_SAMPLES_ENV, Server, bearer, serving
from tests.databases import PostgresDatabases
from tests.images import inspection_scene, png
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

FAST = {"EPHEMERA_EVENT_PING_S": "0.5", **WITH_SAMPLES_ENV}


@dataclass(frozen=True)
class Received:
    id: str
    event: str
    data: dict[str, Any]
    at: float  # time.monotonic() when it arrived


class Stream:
    """One `text/event-stream` answer, parsed on a thread of its own as lines arrive."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        last_event_id: str | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        headers = bearer(token)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self._answer = self._client.stream("GET", url, headers=headers, params=params)
        self.response = self._answer.__enter__()
        self.events: queue.Queue[Received | None] = queue.Queue()
        self.pings = 0
        if self.response.status_code == 200:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self.response.iter_lines():
                if line.startswith(":"):
                    self.pings += 1
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif "data" in fields:
                    data = json.loads(fields["data"])
                    event = Received(fields["id"], fields["event"], data, time.monotonic())
                    self.events.put(event)
                    fields = {}
        except httpx.HTTPError:
            pass  # closed by the test
        finally:
            self.events.put(None)  # the end of the stream

    def next(self, timeout_s: float = 30) -> Received:
        event = self.events.get(timeout=timeout_s)
        assert event is not None, "the stream ended"
        return event

    def until(self, stop: Callable[[Received], bool], timeout_s: float = 60) -> list[Received]:
        """Events up to and including the first for which ``stop`` is true."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            seen.append(self.next(max(0.01, deadline - time.monotonic())))
            if stop(seen[-1]):
                return seen

    def ended(self, timeout_s: float = 10) -> bool:
        """True if the stream ends (after any events still queued) within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.events.get(timeout=0.1) is None:
                    return True
            except queue.Empty:
                continue
        return False

    def close(self) -> None:
        self.response.close()
        self._answer.__exit__(None, None, None)
        self._client.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def events_url(server: Server, session_id: str) -> str:
    return f"{server.api}/sessions/{session_id}/events"


def finished(event: Received) -> bool:
    return event.event == "task.state" and event.data["state"] not in ("pending", "running")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "data", FAST) as running:
        yield running


def test_a_subscriber_sees_each_progress_step_and_the_final_state_in_order(
    server: Server,
) -> None:
    scene = inspection_scene(seed=3)
    token = create_session(server, "station-1")
    names = sorted(scene.boxes)[:3]
    goldens = {
        name: upload(server, "station-1", token, f"golden-{name}.png", png(scene.golden(name)))
        for name in names
    }
    capture = upload(server, "station-1", token, "capture.png", png(scene.with_defect("r1")))
    regions = [
        {"name": name, "box": scene.box(name), "goldens": [goldens[name]], "threshold": 0.9}
        for name in names
    ]
    assert len(regions) == 3
    with Stream(events_url(server, "station-1"), token) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        submitted = httpx.post(
            f"{server.api}/sessions/station-1/tasks",
            json={
                "processor": "roi-compare",
                "inputs": [capture, *goldens.values()],
                "params": {"capture": capture, "regions": regions},
            },
            headers=bearer(token),
        )
        assert submitted.status_code == 201, submitted.text
        task_id = submitted.json()["id"]
        seen = stream.until(finished)

    mine = [e for e in seen if e.data.get("task_id") == task_id]
    assert [e.event for e in seen if e.event.startswith("task.")] == [e.event for e in mine]
    states = [e.data["state"] for e in mine if e.event == "task.state"]
    assert states == ["pending", "running", "succeeded"]
    steps = [(e.data["done"], e.data["total"]) for e in mine if e.event == "task.progress"]
    assert steps == [(0, 3), (1, 3), (2, 3), (3, 3)]
    # In order: pending, running, every step, then the end; IDs strictly increase.
    order = [e.event for e in mine]
    assert order == ["task.state", "task.state", *["task.progress"] * 4, "task.state"]
    ids = [int(e.id) for e in seen]
    assert ids == sorted(set(ids))
    # The crops and goldens it wrote were announced as they were stored.
    created = {e.data["artifact_id"] for e in seen if e.event == "artifact.created"}
    task = httpx.get(f"{server.api}/sessions/station-1/tasks/{task_id}", headers=bearer(token))
    assert created == {o["artifact_id"] for o in task.json()["outputs"]}
    print(f"\n{len(seen)} events for a 3-region roi-compare: {order}")


def test_a_reconnect_with_last_event_id_receives_exactly_what_it_missed(server: Server) -> None:
    token = create_session(server, "s1")
    with Stream(events_url(server, "s1"), token) as stream:
        first = upload(server, "s1", token, "a.txt", b"a")
        before = stream.next()
    assert (before.event, before.data["artifact_id"]) == ("artifact.created", first)

    # While nobody listens: two uploads, a delete, a task from start to end.
    missed_uploads = [upload(server, "s1", token, f"{n}.txt", n.encode()) for n in "bc"]
    deleted = httpx.delete(f"{server.api}/sessions/s1/artifacts/{first}", headers=bearer(token))
    assert deleted.status_code == 200, deleted.text
    submitted = httpx.post(
        f"{server.api}/sessions/s1/tasks",
        json={"processor": "sample-upper", "inputs": missed_uploads},
        headers=bearer(token),
    )
    assert submitted.status_code == 201, submitted.text
    wait_for_task(server, "s1", token, submitted.json()["id"])

    # The whole log from the session's start is the reference for what came after `before`.
    with Stream(events_url(server, "s1"), token, last_event_id="0") as everything:
        log = everything.until(finished)
    assert log[0].event == "session.opened"
    expected = [e for e in log if int(e.id) > int(before.id)]
    assert len(expected) >= 8

    with Stream(events_url(server, "s1"), token, last_event_id=before.id) as resumed:
        got = resumed.until(finished)
        # Nothing more: no duplicate of what was sent already, nothing after the end.
        with pytest.raises(queue.Empty):
            resumed.events.get(timeout=1)
    assert [(e.id, e.event, e.data) for e in got] == [(e.id, e.event, e.data) for e in expected]
    kinds = [e.event for e in got]
    assert kinds[:3] == ["artifact.created", "artifact.created", "artifact.deleted"]
    assert got[2].data == {"artifact_id": first, "by": "request", "at": got[2].data["at"]}

    # The query parameter does the same for clients that cannot set headers.
    url = events_url(server, "s1")
    with Stream(url, token, params={"last_event_id": before.id}) as by_query:
        assert [e.id for e in by_query.until(finished)] == [e.id for e in expected]


def refused(stream: Stream) -> bool:
    """True if the stream was refused for want of a slot (429, with when to retry)."""
    if stream.response.status_code != 429:
        return False
    stream.response.read()
    assert stream.response.json()["error"]["code"] == "rate_limited"
    assert int(stream.response.headers["Retry-After"]) > 0
    return True


def test_streams_beyond_a_sessions_and_the_servers_limit_are_refused_until_one_closes(
    tmp_path: Path,
) -> None:
    env = {**FAST, "EPHEMERA_EVENT_STREAMS_PER_SESSION": "2", "EPHEMERA_EVENT_STREAMS_MAX": "3"}
    server = Server(tmp_path / "data", env).start()
    opened: list[Stream] = []

    def open_stream(session_id: str) -> Stream:
        opened.append(Stream(events_url(server, session_id), tokens[session_id]))
        return opened[-1]

    try:
        tokens = {s: create_session(server, s) for s in ("s1", "s2", "s3")}
        first, second = open_stream("s1"), open_stream("s1")
        assert (first.response.status_code, second.response.status_code) == (200, 200)
        assert refused(open_stream("s1"))  # the session's limit
        assert open_stream("s2").response.status_code == 200
        assert refused(open_stream("s3"))  # the server's limit
        # A refused stream took no slot; a stream its client closed gives its slot back.
        first.close()

        def reopened() -> bool:
            stream = open_stream("s1")
            if refused(stream):
                stream.close()
                return False
            return stream.response.status_code == 200

        wait_for(reopened, 10, "the closed stream's slot to be free")
        # Still at the server's limit: s3 waits for another stream to end.
        assert refused(open_stream("s3"))
        # Live streams still carry events.
        upload(server, "s1", tokens["s1"], "a.txt", b"a")
        assert second.next().event == "artifact.created"
    finally:
        for stream in opened:
            stream.close()
        server.stop()


def test_events_of_one_session_never_reach_another(server: Server) -> None:
    token_a = create_session(server, "a")
    token_b = create_session(server, "b")
    url_a = events_url(server, "a")

    # Wrong, missing or another session's credentials: as on every other route.
    assert httpx.get(url_a).status_code == 401
    assert httpx.get(url_a, headers=bearer(token_b)).status_code == 404
    assert httpx.get(url_a, headers=bearer("s_" + "x" * 40)).status_code == 404
    assert httpx.get(events_url(server, "nope"), headers=bearer(token_a)).status_code == 404
    bad = httpx.get(url_a, headers={**bearer(token_a), "Last-Event-ID": "1; DROP"})
    assert bad.status_code == 422, bad.text

    with (
        Stream(url_a, token_a) as stream_a,
        Stream(events_url(server, "b"), server.admin_key) as stream_b,
    ):
        in_a = upload(server, "a", token_a, "a.txt", b"a")
        in_b = upload(server, "b", token_b, "b.txt", b"b")
        got_a, got_b = stream_a.next(), stream_b.next()
        assert got_a.data["artifact_id"] == in_a
        assert got_b.data["artifact_id"] == in_b
        closed = httpx.delete(f"{server.api}/sessions/b", headers=server.admin())
        assert closed.status_code == 200, closed.text
        ends_b = stream_b.until(lambda e: e.event == "session.closed")
        assert [e.event for e in ends_b] == ["session.closing", "session.closed"]
        assert stream_b.ended()
        # Nothing of b reached a, and a's stream goes on.
        with pytest.raises(queue.Empty):
            stream_a.events.get(timeout=1)
        assert stream_a.pings >= 1

    # A new session under b's ID starts with none of the old one's events, even asked for all.
    token_b2 = create_session(server, "b")
    with Stream(events_url(server, "b"), token_b2, last_event_id="0") as fresh:
        opened = fresh.next()
        assert opened.event == "session.opened"
        assert int(opened.id) > int(ends_b[-1].id)
        with pytest.raises(queue.Empty):
            fresh.events.get(timeout=1)
    # The old token does not open the new session.
    assert httpx.get(events_url(server, "b"), headers=bearer(token_b)).status_code == 404


def test_serve_stops_promptly_with_subscribers_connected(server: Server) -> None:
    token = create_session(server, "s1")
    streams = [Stream(events_url(server, "s1"), token) for _ in range(3)]
    try:
        assert all(s.response.status_code == 200 for s in streams)
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(10)
        took = time.monotonic() - started
        assert all(s.ended(5) for s in streams)
    finally:
        for s in streams:
            s.close()
    print(f"\nserve stopped in {took:.2f} s with 3 subscribers")
    assert took < 5


def test_an_event_on_one_replica_reaches_a_subscriber_on_the_other_within_a_second(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    url = postgres_databases.fresh()
    env = {**FAST, "EPHEMERA_DATABASE_URL": url, "EPHEMERA_EVENT_POLL_S": "30"}
    replicas = [Server(tmp_path / "shared", env) for _ in range(2)]
    try:
        a, b = (r.start() for r in replicas)
        token = create_session(a, "s1")
        latencies = []
        with Stream(events_url(b, "s1"), token) as stream:
            # The listener of b's process connects in the background at the first subscriber.
            wait_for(lambda: b"LISTEN ephemera" in b.log.read_bytes(), 10, "b to listen")
            for n in range(10):
                sent = time.monotonic()
                artifact_id = upload(a, "s1", token, f"{n}.txt", b"x")
                got = stream.next(5)
                assert (got.event, got.data["artifact_id"]) == ("artifact.created", artifact_id)
                latencies.append(got.at - sent)
    finally:
        for r in replicas:
            r.stop()
        postgres_databases.drop(url)
    latencies.sort()
    print(
        f"\ncross-replica event latency (upload sent -> event received), 10 uploads: "
        f"median {latencies[5] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    # The safety poll is 30 s here: only a wake-up delivers this fast.
    assert latencies[-1] < 1.0
