"""Scheduled cleanup: `all` at start-up and every interval, by one process at a time.

Who runs is decided by a named lock in the database, not by a PID file: the runner takes
the lock until the next tick is due and keeps it after the run, so every other process
sharing the database skips that tick; if the runner dies, another takes over within one
interval. The loop is supervised (an error is logged, never fatal) and stops on request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from ephemera.cleanup import CleanupReport

if TYPE_CHECKING:
    from ephemera.store import Store

log = logging.getLogger("ephemera.scheduler")
LOCK = "scheduled-cleanup"


class CleanupScheduler:
    def __init__(self, store: Store, interval_s: float | None = None) -> None:
        self.store = store
        self.interval_s = interval_s or store.settings.cleanup_interval_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_renew = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ephemera-cleanup", daemon=True)
        self._thread.start()
        log.info("scheduled cleanup every %ss", self.interval_s, extra={"action": "start"})

    def stop(self, timeout_s: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("scheduled cleanup still running after %ss; leaving it", timeout_s)
        log.info("scheduled cleanup stopped", extra={"action": "stop"})

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduled cleanup failed", extra={"action": "tick"})
            self._stop.wait(self.interval_s)

    def _hold(self, span_s: float) -> bool:
        now = self.store.clock.now()
        until = now + timedelta(seconds=span_s)
        return self.store.catalog.try_lock(LOCK, self.holder, now, until)

    def tick(self) -> CleanupReport | None:
        """Run `all` if this tick is ours; None when another process has it."""
        if not self._hold(self.interval_s):
            log.info("another process runs this tick", extra={"action": "skip"})
            return None
        self._last_renew = time.monotonic()
        return self.store.cleanup("all", actor="scheduler", progress=self._renew)

    def _renew(self, _operation: str, _done: int) -> None:
        # A run longer than the interval must keep its lock, or a second runner would start.
        if time.monotonic() - self._last_renew > min(60.0, self.interval_s / 2):
            self._hold(self.interval_s)
            self._last_renew = time.monotonic()
