"""Scheduled cleanup: `all` at start-up and every interval, by one process at a time, each
tick followed by a usage sample (the console's charts).

A tick's `all` is incremental: the indexed operations (and the cheap parts of `orphaned`:
staging leftovers, stale pending records) run in full, while the walk comparing stored bytes
with records does one slice of its lap, on its own slower schedule (``orphan_interval_s``,
``orphan_slice_artifacts``, ``orphan_slice_sessions``; see ``ephemera.cleanup.orphans``). So
a tick with nothing to delete costs milliseconds however large the store is.

Who runs is decided by a named lock in the database, not by a PID file: the runner takes
the lock until the next tick is due and keeps it after the run, so every other process
sharing the database skips that tick; if the runner dies, another takes over within one
interval. The loop is supervised (an error is logged, never fatal) and stops on request.

Between ticks the loop watches free space: when it falls below ``low_space_bytes``, an
emergency cleanup (``expired``, then ``quota``) runs at once, and again at most once a minute
while space stays low; once space is back, the reserve is taken again (``ephemera.volume``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ephemera.cleanup import CleanupReport

if TYPE_CHECKING:
    from ephemera.store import Store

log = logging.getLogger("ephemera.scheduler")
LOCK = "scheduled-cleanup"
ACTOR = "scheduler"
EMERGENCY_ACTOR = "scheduler:emergency"
EMERGENCY_OPERATIONS = ("expired", "quota")


def next_tick(store: Store) -> datetime | None:
    """When the next scheduled cleanup is due, as far as the database tells (whichever
    process runs it): the expiry of the lock its runner holds until then; where the lock has
    no expiry (PostgreSQL's advisory lock lives as long as its process), the end of the last
    scheduled run plus the interval. None before any scheduled run."""
    until = store.lock_expiry(LOCK)
    if until is not None:
        return until
    last = store.last_audit("cleanup.all", ACTOR)
    if last is None:
        return None
    return last.at + timedelta(seconds=store.settings.cleanup_interval_s)


class CleanupScheduler:
    def __init__(
        self,
        store: Store,
        interval_s: float | None = None,
        *,
        space_poll_s: float = 5.0,
        emergency_every_s: float = 60.0,
    ) -> None:
        self.store = store
        self.interval_s = interval_s or store.settings.cleanup_interval_s
        self.space_poll_s = space_poll_s
        self.emergency_every_s = emergency_every_s
        self._next_emergency = 0.0
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
            self._wait_watching_space(self.interval_s)

    def _wait_watching_space(self, span_s: float) -> None:
        # A volume fills faster than an interval passes: look at free space between ticks.
        due = time.monotonic() + span_s
        while (left := due - time.monotonic()) > 0:
            if self._stop.wait(min(left, self.space_poll_s)):
                return
            try:
                self.watch_space()
            except Exception:
                log.exception("emergency cleanup failed", extra={"action": "emergency"})

    def watch_space(self) -> list[CleanupReport]:
        """Run the emergency cleanup if free space is low and it is due; its reports."""
        volume = self.store.volume
        shortage = volume.low_space()
        if shortage is None:
            self._next_emergency = 0.0
            volume.restore_reserve()
            return []
        if time.monotonic() < self._next_emergency:
            return []
        self._next_emergency = time.monotonic() + self.emergency_every_s
        log.warning("%s: emergency cleanup", shortage, extra={"action": "emergency"})
        return [self.store.cleanup(op, actor=EMERGENCY_ACTOR) for op in EMERGENCY_OPERATIONS]

    def _hold(self, span_s: float) -> bool:
        now = self.store.clock.now()
        until = now + timedelta(seconds=span_s)
        return self.store.try_lock(LOCK, self.holder, until)

    def tick(self) -> CleanupReport | None:
        """Run `all` if this tick is ours; None when another process has it."""
        if not self._hold(self.interval_s):
            log.info("another process runs this tick", extra={"action": "skip"})
            return None
        self._last_renew = time.monotonic()
        try:
            return self.store.cleanup("all", incremental=True, actor=ACTOR, progress=self._renew)
        finally:
            self._sample_usage()

    def _sample_usage(self) -> None:
        # The console's charts: one sample per tick, by the process that ran it.
        try:
            self.store.record_usage()
        except Exception:
            log.exception("recording usage failed", extra={"action": "usage"})

    def _renew(self, _operation: str, _done: int) -> None:
        # A run longer than the interval must keep its lock, or a second runner would start.
        if time.monotonic() - self._last_renew > min(60.0, self.interval_s / 2):
            self._hold(self.interval_s)
            self._last_renew = time.monotonic()
