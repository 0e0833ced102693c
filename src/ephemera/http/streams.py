"""Event stream slots: how many event streams this process serves at once, and one session.

Each open stream holds a task and reads the database about every ``event_poll_s``: both are
bounded, 429 beyond. Counted in this process only: behind N replicas a session may have up
to N times its limit open. A slot frees when its stream ends, however it ends.
"""

from __future__ import annotations

import threading

from ephemera.http.errors import RateLimited

# A slot frees when any stream ends; there is no better time to promise.
RETRY_AFTER_S = 5


class StreamSlot:
    """One stream's place; ``release`` may be called any number of times, from any thread."""

    def __init__(self, slots: StreamSlots, session_id: str) -> None:
        self._slots = slots
        self.session_id = session_id
        self._released = False

    def release(self) -> None:
        with self._slots.lock:
            if self._released:
                return
            self._released = True
            self._slots.free(self.session_id)


class StreamSlots:
    def __init__(self, most: int, per_session: int) -> None:
        self.most = most
        self.per_session = per_session
        self.lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._total = 0

    def take(self, session_id: str) -> StreamSlot:
        """A slot for a stream of the session; RateLimited at once when none is free."""
        with self.lock:
            held = self._held.get(session_id, 0)
            if held >= self.per_session:
                raise RateLimited(
                    f"at most {self.per_session} event streams at once per session: "
                    "close one, or retry later",
                    RETRY_AFTER_S,
                )
            if self._total >= self.most:
                raise RateLimited(
                    f"this server has its most event streams open ({self.most}): retry later",
                    RETRY_AFTER_S,
                )
            self._held[session_id] = held + 1
            self._total += 1
        return StreamSlot(self, session_id)

    def free(self, session_id: str) -> None:
        """Called by ``StreamSlot.release``, under ``lock``."""
        self._total -= 1
        left = self._held[session_id] - 1
        if left:
            self._held[session_id] = left
        else:
            del self._held[session_id]

    def held(self, session_id: str | None = None) -> int:
        with self.lock:
            return self._total if session_id is None else self._held.get(session_id, 0)
