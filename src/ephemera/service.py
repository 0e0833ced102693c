"""What runs beside the API: recovery at start-up, scheduled cleanup, the scrub and embedded
workers (threads, or supervised processes).

``ephemera serve`` runs a :class:`Service` around its HTTP server. An app that mounts
ephemera's API runs the same in its own lifespan (``FastAPI(lifespan=lifespan(store))``);
``create_app`` alone adds routes and runs nothing. ``settings.scheduled_cleanup``,
``settings.scrub_period_s`` (0: no scrub), ``settings.workers`` and ``settings.worker_mode``
say what starts. Creating admin keys is left to the host (``store.create_key``, ``ephemera
admin-key create``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from ephemera.scheduler import CleanupScheduler
from ephemera.scrub import Scrubber
from ephemera.worker import Worker
from ephemera.workerpool import WorkerPool

if TYPE_CHECKING:
    from ephemera.store import Store

log = logging.getLogger("ephemera.service")


class Service:
    """Started once, stopped once; the store stays open (whoever opened it closes it)."""

    def __init__(self, store: Store, *, auto_processes: bool = False) -> None:
        """``auto_processes``: ``worker_mode = "auto"`` means worker processes when the machine
        has more than one core (``ephemera serve``); otherwise threads (an app's lifespan,
        whose processors may be registered in its own interpreter only)."""
        self.store = store
        self.auto_processes = auto_processes
        self.scheduler: CleanupScheduler | None = None
        self.scrubber: Scrubber | None = None
        self.workers: Worker | None = None
        self.pool: WorkerPool | None = None

    @property
    def worker_processes(self) -> bool:
        mode = self.store.settings.worker_mode
        if mode == "auto":
            return self.auto_processes and (os.cpu_count() or 1) > 1
        return mode == "processes"

    def start(self) -> None:
        closed, deleted = self.store.recover()
        if closed or deleted:
            log.info(
                "recovered: finished closing %d sessions, deleting %d artifacts",
                closed,
                deleted,
                extra={"action": "recover"},
            )
        settings = self.store.settings
        if settings.scheduled_cleanup:
            self.scheduler = CleanupScheduler(self.store)
            self.scheduler.start()
        if settings.scrub_period_s > 0:
            self.scrubber = Scrubber(self.store)
            self.scrubber.start()
        if settings.workers and self.worker_processes:
            self.pool = WorkerPool(settings, settings.workers)
            self.pool.start()
        elif settings.workers:
            self.workers = Worker(self.store, concurrency=settings.workers)
            self.workers.start()

    def stop(self) -> None:
        """Stop claiming tasks (running ones get their grace period), then the background loops."""
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.scrubber is not None:
            self.scrubber.stop()
            self.scrubber = None

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def lifespan(store: Store) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """A lifespan for FastAPI or Starlette: the service runs while the app does."""

    @asynccontextmanager
    async def run(_app: object) -> AsyncIterator[None]:
        service = Service(store)
        # Starting recovers and stopping waits for running tasks: not on the event loop.
        await anyio.to_thread.run_sync(service.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    return run
