"""The scheduled scrub: re-hash every artifact within ``scrub_period_s``, at a bounded rate.

Each tick verifies the unflagged artifacts that would fall due (not verified for a period)
before the next tick, least recently verified first (never verified ones by upload time),
reading at most ``scrub_rate_mb_s``. Verification moves an artifact out of that selection,
so a scrub stopped part-way (shut down, crashed, taken over) resumes where it stopped. Work
spreads over the period as uploads did; a backlog (a first run on an old store) is read at
the rate until it is gone. Flagged artifacts are left to ``ephemera verify``, which also lifts
flags of restored bytes.

One process at a time, by a named lock in the database, as for scheduled cleanup. A run
renews the lock as it goes, and stops (where the next one resumes) once it has lost it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ephemera.integrity import VerifyProgress, VerifyReport, VerifyRequest, run_verify

if TYPE_CHECKING:
    from ephemera.store import Store

log = logging.getLogger("ephemera.scrub")
LOCK = "scheduled-scrub"


def tick_interval(period_s: float) -> float:
    """About 48 ticks a period, between a second and an hour apart."""
    return min(max(period_s / 48, 1.0), 3600.0)


class Scrubber:
    def __init__(
        self,
        store: Store,
        *,
        period_s: float | None = None,
        rate_mb_s: float | None = None,
        tick_s: float | None = None,
    ) -> None:
        self.store = store
        settings = store.settings
        self.period_s = settings.scrub_period_s if period_s is None else period_s
        if self.period_s <= 0:
            raise ValueError("the scrub needs a period above 0")
        self.rate_mb_s = settings.scrub_rate_mb_s if rate_mb_s is None else rate_mb_s
        self.tick_s = tick_interval(self.period_s) if tick_s is None else tick_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set to stop the current run: by stop(), or when the run loses its lock.
        self._run_stop = threading.Event()
        self._last_renew = datetime.min

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ephemera-scrub", daemon=True)
        self._thread.start()
        log.info(
            "scrub every %ss: everything within %ss at most %s MB/s",
            self.tick_s,
            self.period_s,
            self.rate_mb_s,
            extra={"action": "start"},
        )

    def stop(self, timeout_s: float = 30) -> None:
        self._stop.set()
        self._run_stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("scrub still running after %ss; leaving it", timeout_s)
        log.info("scrub stopped", extra={"action": "stop"})

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scrub failed", extra={"action": "tick"})
            self._stop.wait(self.tick_s)

    def _hold(self) -> bool:
        now = self.store.clock.now()
        until = now + timedelta(seconds=self.tick_s)
        return self.store.try_lock(LOCK, self.holder, until)

    def tick(self) -> VerifyReport | None:
        """Verify what falls due before the next tick, if this tick is ours (else None)."""
        if not self._hold():
            log.info("another process scrubs this tick", extra={"action": "skip"})
            return None
        self._last_renew = self.store.clock.now()
        self._run_stop = threading.Event()
        if self._stop.is_set():
            self._run_stop.set()
        due_before = self.store.clock.now() - timedelta(seconds=self.period_s - self.tick_s)
        request = VerifyRequest(rate_mb_s=self.rate_mb_s, due_before=due_before)
        report = run_verify(
            self.store.context, request, actor="scrub", progress=self._renew, stop=self._run_stop
        )
        self.store.metrics.observe_verify(report)
        return report

    def _renew(self, _progress: VerifyProgress) -> None:
        # A run longer than a tick keeps its lock, or a second scrubber would start; one that
        # lost it (expired while it was held up, taken by another) stops. Timed on the clock
        # the lock expires by.
        now = self.store.clock.now()
        if now - self._last_renew > timedelta(seconds=min(60.0, self.tick_s / 2)):
            if not self._hold():
                log.warning(
                    "scrub lost its lock to another process; stopping this run",
                    extra={"action": "skip"},
                )
                self._run_stop.set()
            self._last_renew = now
