"""The webhook: events reach a real HTTP receiver, retried, without ever blocking cleanup."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ephemera import Settings, Store
from ephemera.hooks import SessionClosed, Webhook
from ephemera.testing import ManualClock
from tests.waiting import wait_for


class Receiver:
    def __init__(self, *, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.attempts += 1
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                time.sleep(delay_s)  # a slow receiver, where a test asks for one
                if receiver.attempts <= fail_first:
                    self.send_response(503)
                else:
                    receiver.bodies.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout_s: float = 10) -> list[dict[str, Any]]:
        wait_for(
            lambda: len(self.bodies) >= count,
            timeout_s,
            lambda: f"{count} deliveries, got {self.bodies}",
            interval_s=0.01,
        )
        return self.bodies

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1)
    yield r
    r.close()


def test_the_webhook_hears_closes_and_deletes_and_retries(
    data_dir: Path, clock: ManualClock, receiver: Receiver
) -> None:
    settings = Settings(data_dir=data_dir, webhook_url=receiver.url)
    with Store.open(settings, clock=clock) as store:
        assert store.webhook is not None
        store.webhook.backoff_s = 0.01
        store.create_session("s1")
        artifact = store.put_artifact("s1", b"abc", name="a.bin")
        store.delete_artifact("s1", artifact.id)
        store.close_session("s1")
        bodies = receiver.wait_for(2)
    assert receiver.attempts == 3  # the first attempt was refused and retried
    assert [(b["event"], b["session_id"], b["reason"]) for b in bodies] == [
        ("artifact.deleted", "s1", "delete"),
        ("session.closed", "s1", "close"),
    ]
    assert bodies[0]["artifact_id"] == artifact.id
    assert bodies[0]["size"] == 3


def test_a_slow_webhook_never_slows_cleanup(data_dir: Path, clock: ManualClock) -> None:
    slow = Receiver(delay_s=0.3)
    try:
        settings = Settings(data_dir=data_dir, webhook_url=slow.url)
        with Store.open(settings, clock=clock) as store:
            store.create_session("s1", idle_timeout_s=None)
            for i in range(5):
                store.put_artifact("s1", b"x", name=f"{i}.bin", expires_in_s=1)
            clock.advance(2)
            started = time.monotonic()
            report = store.cleanup("expired")
            assert time.monotonic() - started < 0.5
            assert report.deleted_count == 5
            slow.wait_for(1)
    finally:
        slow.close()


def test_senders_racing_to_the_first_event_start_one_delivery_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[threading.Thread] = []

    class SlowToStart(threading.Thread):
        """Widens the window between checking for a thread and having one."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(0.05)
            super().__init__(*args, **kwargs)

        def start(self) -> None:
            started.append(self)
            super().start()

    webhook = Webhook("http://127.0.0.1:9/unused", attempts=1, backoff_s=0)
    event = SessionClosed("s1", 0, 0, "close", datetime.now(UTC))
    go = threading.Barrier(8)

    def send() -> None:
        go.wait()
        webhook.send(event)

    senders = [threading.Thread(target=send) for _ in range(8)]
    monkeypatch.setattr(threading, "Thread", SlowToStart)  # for the webhook's thread only
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    webhook.close(timeout_s=10)
    assert len(started) == 1
