"""Waiting on a condition with a deadline: never sleep a guessed time and then count."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

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
