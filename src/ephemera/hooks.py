"""Callbacks on session close and artifact deletion, and an optional webhook for the same.

Callbacks run after the change is committed, in the thread that made it; one that raises is
logged and does not affect the others or the operation. The webhook sender runs in its own
thread with a bounded queue, so it never blocks a close or a cleanup run.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar

log = logging.getLogger("ephemera.hooks")


@dataclass(frozen=True, slots=True)
class SessionClosed:
    session_id: str
    artifact_count: int
    deleted_bytes: int
    reason: str  # "close" for an explicit close, else the cleanup rule
    at: datetime


@dataclass(frozen=True, slots=True)
class ArtifactDeleted:
    session_id: str
    artifact_id: str
    size: int
    reason: str  # "delete" for an explicit delete, else the cleanup rule
    at: datetime


Event = SessionClosed | ArtifactDeleted
E = TypeVar("E", SessionClosed, ArtifactDeleted)


class Hooks:
    def __init__(self) -> None:
        self._session_closed: list[Callable[[SessionClosed], object]] = []
        self._artifact_deleted: list[Callable[[ArtifactDeleted], object]] = []

    def on_session_closed(
        self, callback: Callable[[SessionClosed], object]
    ) -> Callable[[SessionClosed], object]:
        self._session_closed.append(callback)
        return callback

    def on_artifact_deleted(
        self, callback: Callable[[ArtifactDeleted], object]
    ) -> Callable[[ArtifactDeleted], object]:
        self._artifact_deleted.append(callback)
        return callback

    def session_closed(self, event: SessionClosed) -> None:
        _call_all(self._session_closed, event)

    def artifact_deleted(self, event: ArtifactDeleted) -> None:
        _call_all(self._artifact_deleted, event)


def _call_all(callbacks: list[Callable[[E], object]], event: E) -> None:
    for callback in callbacks:
        try:
            callback(event)
        except Exception:
            log.exception("hook %r failed on %s", callback, type(event).__name__)


def event_body(event: Event) -> dict[str, Any]:
    body = asdict(event)
    body["at"] = event.at.isoformat()
    body["event"] = "session.closed" if isinstance(event, SessionClosed) else "artifact.deleted"
    return body


class Webhook:
    """POSTs each event as JSON to a URL, retrying with backoff; drops when far behind."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        capacity: int = 10_000,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._queue: queue.Queue[Event | None] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        # Senders race to the first event; only one of them may start the delivery thread.
        self._start_lock = threading.Lock()
        self.dropped = 0

    def attach(self, hooks: Hooks) -> None:
        hooks.on_session_closed(self.send)
        hooks.on_artifact_deleted(self.send)

    def send(self, event: Event) -> None:
        self._start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            log.warning("webhook queue full: dropped %s", type(event).__name__)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ephemera-webhook", daemon=True
                )
                self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        import urllib.request  # here: a process that sends no webhook never loads http.client

        data = json.dumps(event_body(event)).encode()
        for attempt in range(self.attempts):
            request = urllib.request.Request(  # noqa: S310 - the URL is the operator's setting
                self.url, data=data, headers={"content-type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    if response.status < 300:
                        return
            except OSError as exc:
                log.info("webhook attempt %d failed: %s", attempt + 1, exc)
            time.sleep(self.backoff_s * 2**attempt)
        log.warning("webhook gave up on %s after %d attempts", type(event).__name__, self.attempts)
