"""Sending a request again after a passing failure, where doing so is safe.

A request that creates something is safe to send twice only under an ``Idempotency-Key``:
the server then answers a repeat with the first answer and creates nothing more. These
helpers retry such a request on the failures worth another try (a server that could not be
reached or dropped the connection, a busy or briefly failing one, the same key still being
served), a bounded number of times, waiting the server's ``Retry-After`` when it gave one and
a growing, jittered delay otherwise.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ephemera.client.errors import ServerUnreachable
from ephemera.errors import IdempotencyKeyInUse, Unavailable

T = TypeVar("T")

# Retries after the first attempt: with the delays below, about 15 s of trying in all.
RETRIES = 4
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
# A Retry-After longer than this is not waited for: the caller decides what to do.
MAX_RETRY_AFTER_S = 30.0

RETRYABLE = (ServerUnreachable, Unavailable, IdempotencyKeyInUse)


def delay_before(attempt: int, error: Exception) -> float | None:
    """How long to wait before retry number ``attempt`` (0-based) after ``error``; None when
    the server asks for longer than is worth waiting."""
    after: float | None = getattr(error, "retry_after_s", None)
    if after is not None:
        return float(after) if after <= MAX_RETRY_AFTER_S else None
    backoff: float = min(MAX_DELAY_S, FIRST_DELAY_S * 2**attempt)
    # Jitter, so clients cut off together do not come back together (not a secret).
    return backoff * (0.5 + random.random() / 2)  # noqa: S311


def retried(send: Callable[[], T], retries: int) -> T:
    attempt = 0
    while True:
        try:
            return send()
        except RETRYABLE as error:
            delay = delay_before(attempt, error)
            if attempt >= retries or delay is None:
                raise
        time.sleep(delay)
        attempt += 1


async def aretried(send: Callable[[], Awaitable[T]], retries: int) -> T:
    attempt = 0
    while True:
        try:
            return await send()
        except RETRYABLE as error:
            delay = delay_before(attempt, error)
            if attempt >= retries or delay is None:
                raise
        await asyncio.sleep(delay)
        attempt += 1


def idempotency_headers(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Idempotency-Key": key}
