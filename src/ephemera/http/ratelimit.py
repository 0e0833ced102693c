"""Per-client limits of this process: requests a minute, failed authentications, and
refused download links.

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
from collections.abc import AsyncIterator

import anyio
from fastapi import Request

from ephemera.errors import LinkRefused, SessionUnreachable, Unauthenticated
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


class FailureLimit:
    """Failures of one kind per client address.

    An address with ``per_minute`` failures in the last minute gets 429 on every request its
    gate guards (whatever it carries, so that guessing cannot go on) until the oldest failure
    is a minute old. The failure that starts such a burst is audited as ``action``; a burst
    that goes on is audited again at most once a minute.
    """

    def __init__(self, store: Store, per_minute: int, what: str, action: str) -> None:
        self.store = store
        self.per_minute = per_minute
        self.what = what
        self.action = action
        self._window = SlidingWindow(per_minute)
        self._audited = SlidingWindow(1)

    def refuse_if_over(self, address: str) -> None:
        wait = self._window.retry_after(address, record=False)
        if wait is not None:
            raise RateLimited(
                f"too many {self.what} from {address}: at most {self.per_minute} a minute",
                wait,
            )

    def record_failure(self, address: str) -> None:
        if self._counts_burst(address):
            self._audit_burst(address)

    async def failed(self, address: str) -> None:
        """``record_failure`` from the event loop: the audit write, when there is one, runs
        in a worker thread (even while the request is being cancelled: it must not be lost)."""
        if self._counts_burst(address):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._audit_burst, address)

    def _counts_burst(self, address: str) -> bool:
        """Count a failure; whether it starts (or, a minute on, continues) a burst to audit."""
        burst = self._window.add(address) >= self.per_minute
        return burst and self._audited.retry_after(address, record=True) is None

    def _audit_burst(self, address: str) -> None:
        log.warning("%s from %s reached the limit", self.what, address)
        self.store.audit(
            "http", self.action, address, {"failures": self.per_minute, "window_s": int(WINDOW_S)}
        )


class AuthFailureLimit(FailureLimit):
    """Failed authentications: every credentialed route shares one count per address."""

    def __init__(self, store: Store) -> None:
        per_minute = store.settings.auth_failures_per_minute
        super().__init__(store, per_minute, "failed authentications", "auth.throttled")

    async def gate(self, request: Request) -> AsyncIterator[None]:
        """A dependency of every credentialed route: refuse a throttled address, count
        failures (missing or unknown credentials, a session the credential does not open).

        Async, as every gate is: the count is in memory, so a request takes no trip to a
        worker thread for it; only the audit record that starts a burst does."""
        address = client_address(request)
        self.refuse_if_over(address)
        try:
            yield
        except (Unauthenticated, SessionUnreachable):
            await self.failed(address)
            raise


class LinkRefusalLimit(FailureLimit):
    """Refused download links that may be guesses (see ``LinkRefused.guess``), counted apart
    from authentications: a page of expired links, or of bad ones, throttles that address's
    links only, never its credentialed calls."""

    def __init__(self, store: Store) -> None:
        per_minute = store.settings.link_refusals_per_minute
        super().__init__(store, per_minute, "refused links", "link.throttled")

    async def gate(self, request: Request) -> AsyncIterator[None]:
        """A dependency of the link routes: refuse a throttled address, count guesses."""
        address = client_address(request)
        self.refuse_if_over(address)
        try:
            yield
        except LinkRefused as refused:
            if refused.guess:
                await self.failed(address)
            raise


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


_limits: weakref.WeakKeyDictionary[Store, AuthFailureLimit] = weakref.WeakKeyDictionary()
_cleanup_limits: weakref.WeakKeyDictionary[Store, RateLimit] = weakref.WeakKeyDictionary()
_link_limits: weakref.WeakKeyDictionary[Store, LinkRefusalLimit] = weakref.WeakKeyDictionary()
_limits_lock = threading.Lock()


def auth_failures(store: Store) -> AuthFailureLimit:
    """The one failure count of a store's routers (api, admin and worker share it)."""
    with _limits_lock:
        limit = _limits.get(store)
        if limit is None:
            limit = _limits[store] = AuthFailureLimit(store)
        return limit


def cleanup_requests(store: Store) -> RateLimit:
    """The one per-key count of cleanup and verify requests of a store's faces (the API's
    and the console's share it)."""
    with _limits_lock:
        limit = _cleanup_limits.get(store)
        if limit is None:
            limit = _cleanup_limits[store] = RateLimit(
                store.settings.cleanup_requests_per_minute, "cleanup requests"
            )
        return limit


def link_refusals(store: Store) -> LinkRefusalLimit:
    """The one count of refused links of a store's routers."""
    with _limits_lock:
        limit = _link_limits.get(store)
        if limit is None:
            limit = _link_limits[store] = LinkRefusalLimit(store)
        return limit
