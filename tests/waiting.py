"""Waiting on a condition with a deadline: never sleep a guessed time and then count."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx2 as httpx

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout_s: float,
    what: str | Callable[[], str],
    *,
    interval_s: float = 0.05,
) -> T:
    """Call ``condition`` until it returns something true, and return that. At the deadline,
    fail naming ``what`` was awaited (a callable: called then, e.g. to show a log)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            awaited = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {awaited}")
        time.sleep(interval_s)
    return value


def wait_until_serving(
    process: subprocess.Popen[Any], url: str, log: Callable[[], str], timeout_s: float = 60
) -> None:
    """Wait until the server ``process`` answers ``url``/healthz; fail at once, showing its
    ``log``, if it exits first."""

    def answering() -> bool:
        assert process.poll() is None, f"server exited: {log()}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answering, timeout_s, lambda: f"{url}/healthz to answer: {log()}")
