"""A lease held for the length of a block: renewed in the background, released at its end.

Renewal runs at a third of the TTL, so one failed renewal (a network hiccup, a restarting
server) still leaves a second try before the lease would expire. A lease that could not be
renewed in time, or that the server no longer knows, is *lost*: ``lost`` is set at once (the
block can look, or call :meth:`check` between steps), and leaving the block raises
:class:`~ephemera.client.errors.LeaseLost`, because what the block did after that moment was
no longer protected. An exception from the block itself is never replaced: it gets a note.
A release that fails is logged: the lease then ends at its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from types import TracebackType

from ephemera.client.errors import LeaseLost, ServerUnreachable
from ephemera.errors import EphemeraError, NotFound, Unavailable
from ephemera.models import Lease

log = logging.getLogger("ephemera.client.lease")

RENEW_FRACTION = 1 / 3
# A renewal that failed for a passing reason is tried again this soon (bounded by the TTL).
RETRY_S = 1.0

_TRANSIENT = (Unavailable, ServerUnreachable)


class _Held:
    """What the sync and async holders share: the current lease, the loss, the exit."""

    def __init__(self, lease: Lease, ttl_s: float) -> None:
        self.lease = lease
        self.ttl_s = ttl_s
        self.error: LeaseLost | None = None
        # Measured locally from before each renewal was sent: the server's own deadline is
        # never earlier, whatever the clocks of the two machines say.
        self._valid_until = time.monotonic() + ttl_s

    @property
    def id(self) -> str:
        return self.lease.id

    @property
    def interval_s(self) -> float:
        return max(self.ttl_s * RENEW_FRACTION, 0.05)

    def _renewed(self, lease: Lease, sent_at: float) -> None:
        self.lease = lease
        self._valid_until = sent_at + self.ttl_s

    def _failed(self, exc: EphemeraError) -> float | None:
        """After a failed renewal: seconds until the next try, or None once the lease is lost."""
        left = self._valid_until - time.monotonic()
        if isinstance(exc, _TRANSIENT) and left > 0:
            log.warning("lease %s: renewal failed (%s); retrying", self.lease.id, exc.message)
            return min(RETRY_S, max(left / 2, 0.05))
        self.error = LeaseLost(
            f"lease {self.lease.id} on session {self.lease.session_id} was lost: {exc.message}"
        )
        self.error.__cause__ = exc
        log.error("%s", self.error.message)
        return None

    def _exit(self, exc: BaseException | None, release_error: EphemeraError | None) -> None:
        if release_error is not None:
            # The work is done and the lease ends at its TTL anyway: worth a warning (cleanup
            # waits that long), not an error that would undo a finished block.
            log.warning("lease %s: not released (%s)", self.lease.id, release_error.message)
        if self.error is None:
            return
        if exc is not None:
            exc.add_note(f"ephemera: {self.error.message}")
            return
        raise self.error


class HeldLease(_Held):
    """A lease renewed by a daemon thread while the ``with`` block runs."""

    def __init__(
        self,
        lease: Lease,
        ttl_s: float,
        renew: Callable[[], Lease],
        release: Callable[[], None],
    ) -> None:
        super().__init__(lease, ttl_s)
        self._renew = renew
        self._release = release
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"ephemera-lease-{lease.id}", daemon=True
        )

    def check(self) -> None:
        """Raise LeaseLost if the lease was lost: call it between steps that need protection."""
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            sent_at = time.monotonic()
            try:
                self._renewed(self._renew(), sent_at)
                wait = self.interval_s
            except EphemeraError as exc:
                retry = self._failed(exc)
                if retry is None:
                    self.lost.set()
                    return
                wait = retry

    def __enter__(self) -> HeldLease:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._exit(exc, _release(self._release))


def _release(release: Callable[[], None]) -> EphemeraError | None:
    try:
        release()
    except NotFound:
        pass  # already gone (expired and cleaned, or its session closed): nothing to release
    except EphemeraError as exc:
        return exc
    return None


class AsyncHeldLease(_Held):
    """A lease renewed by an asyncio task while the ``async with`` block runs."""

    def __init__(
        self,
        lease: Lease,
        ttl_s: float,
        renew: Callable[[], Awaitable[Lease]],
        release: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(lease, ttl_s)
        self._renew = renew
        self._release = release
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    async def _run(self) -> None:
        wait = self.interval_s
        while True:
            await asyncio.sleep(wait)
            sent_at = time.monotonic()
            try:
                self._renewed(await self._renew(), sent_at)
                wait = self.interval_s
            except EphemeraError as exc:
                retry = self._failed(exc)
                if retry is None:
                    self.lost.set()
                    return
                wait = retry

    async def __aenter__(self) -> AsyncHeldLease:
        self._task = asyncio.create_task(self._run(), name=f"ephemera-lease-{self.lease.id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        release_error: EphemeraError | None = None
        try:
            await self._release()
        except NotFound:
            pass
        except EphemeraError as error:
            release_error = error
        self._exit(exc, release_error)
