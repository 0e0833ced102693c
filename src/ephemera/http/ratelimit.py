"""Per-client limits of this process: requests a minute, and failed authentications.

Counts live in memory: each replica counts its own, and a restart forgets them. The client
is the peer address of the connection; behind a proxy that is the proxy, unless the server
is told to trust its ``X-Forwarded-For`` (uvicorn's ``--forwarded-allow-ips``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator

from fastapi import Request

from ephemera.errors import SessionUnreachable, Unauthenticated
from ephemera.http.errors import RateLimited
from ephemera.store import Store

log = logging.getLogger("ephemera.http")

WINDOW_S = 60.0
# Beyond this many tracked clients, forget the idle ones (a spray of addresses stays bounded).
PRUNE_ABOVE = 10_000


class SlidingWindow:
    """Events per key in the last minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - WINDOW_S:
            events.popleft()
        return events

    def _prune(self, now: float) -> None:
        if len(self._events) > PRUNE_ABOVE:
            for key in [k for k, e in self._events.items() if not e or e[-1] <= now - WINDOW_S]:
                del self._events[key]

    def retry_after(self, key: str, *, record: bool) -> int | None:
        """Seconds until ``key`` is under the limit again (None: it is), recording an event
        when it is under the limit and ``record`` is set."""
        now = time.monotonic()
        with self._lock:
            events = self._recent(key, now)
            if len(events) >= self.per_minute:
                return max(math.ceil(events[0] + WINDOW_S - now), 1)
            if record:
                self._prune(now)
                events.append(now)
            return None

    def add(self, key: str) -> int:
        """Record an event; the number of events of ``key`` in the last minute."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            events = self._recent(key, now)
            events.append(now)
            return len(events)


class RateLimit:
    """At most ``per_minute`` calls per key in any sliding minute; 429 beyond."""

    def __init__(self, per_minute: int, what: str) -> None:
        self.per_minute = per_minute
        self.what = what
        self._window = SlidingWindow(per_minute)

    def check(self, key: str) -> None:
        wait = self._window.retry_after(key, record=True)
        if wait is not None:
            raise RateLimited(f"at most {self.per_minute} {self.what} a minute", wait)


class AuthFailureLimit:
    """Failed authentications per client address.

    An address with ``per_minute`` failures in the last minute gets 429 on every API request
    (whatever its credentials, so that guessing cannot go on) until the oldest failure is a
    minute old. The failure that starts such a burst is audited; a burst that goes on is
    audited again at most once a minute.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.per_minute = store.settings.auth_failures_per_minute
        self._window = SlidingWindow(self.per_minute)
        self._audited = SlidingWindow(1)

    def refuse_if_over(self, address: str) -> None:
        wait = self._window.retry_after(address, record=False)
        if wait is not None:
            raise RateLimited(
                f"too many failed authentications from {address}: "
                f"at most {self.per_minute} a minute",
                wait,
            )

    def record_failure(self, address: str) -> None:
        burst = self._window.add(address) >= self.per_minute
        if burst and self._audited.retry_after(address, record=True) is None:
            log.warning("failed authentications from %s reached the limit", address)
            self.store.audit(
                "http",
                "auth.throttled",
                address,
                {"failures": self.per_minute, "window_s": int(WINDOW_S)},
            )

    def gate(self, request: Request) -> Iterator[None]:
        """A dependency of every credentialed route: refuse a throttled address, count
        failures (missing or unknown credentials, a session the credential does not open)."""
        address = client_address(request)
        self.refuse_if_over(address)
        try:
            yield
        except (Unauthenticated, SessionUnreachable):
            self.record_failure(address)
            raise


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


_limits: weakref.WeakKeyDictionary[Store, AuthFailureLimit] = weakref.WeakKeyDictionary()
_limits_lock = threading.Lock()


def auth_failures(store: Store) -> AuthFailureLimit:
    """The one failure count of a store's routers (api, admin and worker share it)."""
    with _limits_lock:
        limit = _limits.get(store)
        if limit is None:
            limit = _limits[store] = AuthFailureLimit(store)
        return limit
