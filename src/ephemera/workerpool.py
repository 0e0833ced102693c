"""Worker processes of a server: ``ephemera worker`` children, supervised.

Processors run off the API's interpreter: a CPU-bound task holds no GIL the API needs to
answer. Each child gets the server's settings on its standard input and keeps reading it:
end of file means the server is gone (even killed with SIGKILL), and the child stops at
once, so none outlives its server. A child that dies is started again; its task is retried
by the lease rules (its claim expires, the next claim requeues it). The children wake on
submissions through the catalog's wake-ups (``catalog.notify``), as any worker process does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ephemera.config import Settings

log = logging.getLogger("ephemera.workerpool")

SUPERVISE_EVERY_S = 0.2
# A child that dies sooner than this after its start is restarted after a growing pause, so
# that one that cannot start (a broken database URL) does not spin.
HEALTHY_AFTER_S = 5.0
MAX_RESTART_DELAY_S = 10.0


def worker_command(concurrency: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ephemera",
        "worker",
        "--concurrency",
        str(concurrency),
        "--supervised",
    ]


class Child:
    """One worker process and when it may be started again."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_delay_s = 0.0
        self.restart_at = 0.0


class WorkerPool:
    """``count`` worker processes, each running one task at a time, until stopped."""

    def __init__(self, settings: Settings, count: int, *, grace_s: float = 30) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._settings_line = settings.model_dump_json().encode() + b"\n"
        self.count = count
        self.grace_s = grace_s
        self._children = [Child(slot) for slot in range(count)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [c.process.pid for c in self._children if c.process is not None]

    def start(self) -> None:
        self._stopping.clear()
        with self._lock:
            for child in self._children:
                self._spawn(child)
        self._thread = threading.Thread(
            target=self._supervise, name="ephemera-worker-pool", daemon=True
        )
        self._thread.start()
        log.info(
            "started %d worker processes: %s",
            self.count,
            ", ".join(map(str, self.pids)),
            extra={"action": "start"},
        )

    def stop(self) -> None:
        """SIGTERM every child (its running task gets the grace period), SIGKILL the late."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            running = [c.process for c in self._children if c.process is not None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 5
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker process %d killed", process.pid, extra={"action": "stop"})
                process.kill()
                process.wait()
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        log.info("worker processes stopped", extra={"action": "stop"})

    def _spawn(self, child: Child) -> None:
        process = subprocess.Popen(
            worker_command(),
            stdin=subprocess.PIPE,
            # The server's own output: the children's logs go where the server's go.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdin is not None
        try:
            process.stdin.write(self._settings_line)
            process.stdin.flush()
        except OSError:
            pass  # it died at once: the supervisor sees it
        child.process = process
        child.started_at = time.monotonic()

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            with self._lock:
                for child in self._children:
                    self._check(child)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        process = child.process
        if process is not None:
            code = process.poll()
            if code is None:
                if now - child.started_at >= HEALTHY_AFTER_S:
                    child.restart_delay_s = 0.0
                return
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            child.process = None
            if now - child.started_at < HEALTHY_AFTER_S:
                child.restart_delay_s = min(
                    MAX_RESTART_DELAY_S, max(0.5, child.restart_delay_s * 2)
                )
            child.restart_at = now + child.restart_delay_s
            log.warning(
                "worker process %d exited with %s; starting another in %.1f s",
                process.pid,
                code,
                child.restart_delay_s,
                extra={"action": "restart"},
            )
        if now >= child.restart_at:
            self._spawn(child)
            assert child.process is not None
            log.info(
                "worker process %d started in slot %d",
                child.process.pid,
                child.slot,
                extra={"action": "restart"},
            )
