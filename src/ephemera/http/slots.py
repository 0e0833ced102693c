"""Upload slots: how many uploads one session may have in flight at once.

Counted in this process only: behind a load balancer with N replicas, one session may have
up to N times the limit in flight. Each stalled upload still ends at the body idle timeout.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from ephemera.http.errors import RateLimited
from ephemera.store import Store

# A slot frees when any upload of the session ends; there is no better time to promise.
RETRY_AFTER_S = 1


class UploadSlots:
    def __init__(self, per_session: int) -> None:
        self.per_session = per_session
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, session_id: str) -> Iterator[None]:
        """One slot of the session for the block; RateLimited at once when none is free."""
        with self._lock:
            held = self._held.get(session_id, 0)
            if held >= self.per_session:
                raise RateLimited(
                    f"at most {self.per_session} uploads at once per session: "
                    "retry when one has finished",
                    RETRY_AFTER_S,
                )
            self._held[session_id] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[session_id] - 1
                if left:
                    self._held[session_id] = left
                else:
                    del self._held[session_id]

    def held(self, session_id: str) -> int:
        with self._lock:
            return self._held.get(session_id, 0)


_slots: weakref.WeakKeyDictionary[Store, UploadSlots] = weakref.WeakKeyDictionary()
_slots_lock = threading.Lock()


def upload_slots(store: Store) -> UploadSlots:
    """The one count of a store's routers: artifact uploads, imports and tus PATCHes share it."""
    with _slots_lock:
        slots = _slots.get(store)
        if slots is None:
            slots = _slots[store] = UploadSlots(store.settings.max_concurrent_uploads)
        return slots
