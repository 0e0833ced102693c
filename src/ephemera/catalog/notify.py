"""Wake-ups: who waits for a change (an event stream, an idle worker) is woken after its commit.

A topic names what changed: ``events:<session>`` (an event of that session was recorded) or
``tasks`` (a task became claimable). In one process, the :class:`Notifier` wakes the
subscribers of a topic right after the commit (``Database.committed``). Across processes on
PostgreSQL, the writing transaction also sends a NOTIFY (see ``db.announce``) and one
:class:`PgListener` per catalog, on a connection and a thread of its own, passes what it
hears to the Notifier; on SQLite, :class:`SocketWakeups` does the same with datagrams
between the processes of one machine. A wake-up is a hint, never the data: subscribers read
the database after it, and wait with a timeout (a slower safety poll) in case one was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ephemera.catalog.db import CHANNEL

log = logging.getLogger("ephemera.notify")

TASKS = "tasks"
RECONNECT_DELAY_S = 1.0
# Every stream woken after a gap in listening reads the database once: spread over this span,
# not all at once on a small connection pool (their safety poll is about as long).
WAKE_ALL_SPREAD_S = 1.0
# A silently dead listening connection is found within about the sum of these.
CHECK_EVERY_S = 30.0
CHECK_TIMEOUT_S = 10.0


def session_topic(session_id: str) -> str:
    return f"events:{session_id}"


class Wakeup:
    """One subscriber's flag: set from any thread, awaited by one thread or one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._flag = threading.Event()
        # An awaited Wakeup is set and cleared in its loop only: a set from another thread
        # that lands after a wait ended counts for the next wait, never ends it early.
        self._async = asyncio.Event() if loop is not None else None

    def set(self, within_s: float = 0.0) -> None:
        """Wake the waiter; ``within_s``: an awaited one at a random moment within that span,
        so that many streams woken together do not all read the database at one instant (a
        thread, an idle worker, is woken at once: there are few)."""
        if self._loop is None or self._async is None:
            self._flag.set()
            return
        # The loop may have closed (its server stopped): nobody waits there any more.
        with contextlib.suppress(RuntimeError):
            if within_s > 0:
                delay = random.uniform(0, within_s)  # noqa: S311 (a jitter, not a secret)
                self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._async.set)
            else:
                self._loop.call_soon_threadsafe(self._async.set)

    def wait(self, timeout_s: float) -> bool:
        """Block until set or ``timeout_s``; True if set (the flag is cleared)."""
        woken = self._flag.wait(timeout_s)
        self._flag.clear()
        return woken

    async def wait_async(self, timeout_s: float) -> bool:
        """Wait in the Wakeup's loop until set or ``timeout_s``; True if set (then cleared)."""
        assert self._async is not None, "an awaited Wakeup is made with its loop"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._async.wait(), timeout_s)
        woken = self._async.is_set()
        self._async.clear()
        return woken


class Notifier:
    """Topics and their subscribers in this process."""

    def __init__(self, on_first_subscriber: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Wakeup]] = {}
        self._on_first_subscriber = on_first_subscriber

    @contextlib.contextmanager
    def subscribe(
        self, topic: str, loop: asyncio.AbstractEventLoop | None = None
    ) -> Iterator[Wakeup]:
        """A Wakeup set on every publication of ``topic`` while the block runs.

        Subscribe before reading what the topic is about: a change committed after the
        read then sets the Wakeup, and none is lost between the read and the wait.
        """
        wakeup = Wakeup(loop)
        with self._lock:
            self._subscribers.setdefault(topic, set()).add(wakeup)
            start, self._on_first_subscriber = self._on_first_subscriber, None
        if start is not None:
            start()
        try:
            yield wakeup
        finally:
            with self._lock:
                waiting = self._subscribers.get(topic)
                if waiting is not None:
                    waiting.discard(wakeup)
                    if not waiting:
                        del self._subscribers[topic]

    def publish(self, topics: Iterable[str]) -> None:
        with self._lock:
            woken = [w for t in topics for w in self._subscribers.get(t, ())]
        for wakeup in woken:
            wakeup.set()

    def publish_all(self, within_s: float = 0.0) -> None:
        """Wake every subscriber: after a gap in listening, anything may have changed.
        ``within_s``: each at a random moment within that span (see ``Wakeup.set``)."""
        with self._lock:
            woken = [w for waiting in self._subscribers.values() for w in waiting]
        for wakeup in woken:
            wakeup.set(within_s)


class PgListener:
    """LISTEN on the catalog's PostgreSQL database, on a thread of its own, until stopped.

    The connection comes from the engine (same URL and options) and leaves its pool for
    good. A lost connection is opened again after a pause; every subscriber is woken then,
    since notifications sent in between are gone. A connection can also die silently (a
    peer gone, a firewall that drops the idle flow): waiting for notifications never
    notices, so every ``check_every_s`` the listener runs ``SELECT 1``, and a check
    unanswered within ``check_timeout_s`` cuts the connection and counts as lost.
    """

    def __init__(
        self,
        engine: Engine,
        notifier: Notifier,
        *,
        check_every_s: float = CHECK_EVERY_S,
        check_timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self._engine = engine
        self._notifier = notifier
        self._check_every_s = check_every_s
        self._check_timeout_s = check_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ephemera-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # SQLAlchemy's, and the driver's own (psycopg.Error)
                log.warning("listening for wake-ups failed: %s", exc, extra={"action": "listen"})
            self.listening.clear()
            self._notifier.publish_all(WAKE_ALL_SPREAD_S)
            self._stop.wait(RECONNECT_DELAY_S)

    def _listen(self) -> None:
        pooled = self._engine.raw_connection()
        driver: Any = pooled.driver_connection
        pooled.detach()  # this connection is the listener's for good
        # A handle on the connection's socket, to cut it under a check that hangs.
        sock = socket.socket(fileno=os.dup(driver.pgconn.socket))
        try:
            driver.rollback()
            driver.autocommit = True
            driver.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            self._notifier.publish_all(WAKE_ALL_SPREAD_S)
            log.info(
                "LISTEN %s: wake-ups from other processes", CHANNEL, extra={"action": "listen"}
            )
            check_at = time.monotonic() + self._check_every_s
            while not self._stop.is_set():
                # A timeout, so that a stop is seen at once.
                for notification in driver.notifies(timeout=0.25):
                    self._notifier.publish([notification.payload])
                if time.monotonic() >= check_at:
                    self._check(driver, sock)
                    check_at = time.monotonic() + self._check_every_s
        finally:
            sock.close()
            driver.close()

    def _check(self, driver: Any, sock: socket.socket) -> None:
        """``SELECT 1``, or ConnectionError if it is not answered in time (the connection
        is then cut, which ends the driver's wait). Notifications that arrive meanwhile are
        kept by the driver for the next ``notifies``."""
        cut = threading.Event()

        def cut_off() -> None:
            cut.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(self._check_timeout_s, cut_off)
        timer.daemon = True
        timer.start()
        try:
            driver.execute("SELECT 1")
        except Exception as exc:
            if cut.is_set():
                raise ConnectionError(
                    f"the connection answered no check in {self._check_timeout_s:g} s"
                ) from exc
            raise
        finally:
            timer.cancel()


# Abstract socket names (Linux): no file to leave behind, gone with their process.
_ABSTRACT_PREFIX = b"\0ephemera-wake-"


class SocketWakeups:
    """Wake-ups across the processes of one machine on an SQLite catalog (the ``ephemera
    worker`` processes of a server, and the server's event streams).

    SQLite has no NOTIFY. Each listening process binds a datagram socket in Linux's abstract
    namespace and names it by an empty file in ``directory`` (beside the database file). A
    write that announced topics sends them to every other name there once it committed; a
    name whose socket is gone (its process died) is removed by the sender that finds it so.
    Like a NOTIFY, a datagram is a hint: a full receive buffer drops it, the safety poll
    remains. Elsewhere than on Linux there is no abstract namespace: :meth:`for_sqlite`
    gives None and other processes wait for their safety poll.
    """

    def __init__(self, directory: Path, notifier: Notifier) -> None:
        self.directory = directory
        self._notifier = notifier
        self._name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._receiver: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.listening = threading.Event()

    @classmethod
    def for_sqlite(cls, database_file: Path | None, notifier: Notifier) -> SocketWakeups | None:
        if database_file is None or not sys.platform.startswith("linux"):
            return None
        return cls(database_file.parent / f"{database_file.name}-wake", notifier)

    def start(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            receiver.bind(_ABSTRACT_PREFIX + self._name.encode())
            (self.directory / self._name).touch(mode=0o600)
        except OSError as exc:
            log.warning(
                "no wake-ups from other processes (%s): they wait for the safety poll",
                exc,
                extra={"action": "listen"},
            )
            return
        # A timeout, so that a stop is seen soon.
        receiver.settimeout(0.25)
        self._receiver = receiver
        self._thread = threading.Thread(target=self._run, name="ephemera-wakeups", daemon=True)
        self._thread.start()
        self.listening.set()
        log.info("wake-ups from other processes in %s", self.directory, extra={"action": "listen"})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._receiver is not None:
            (self.directory / self._name).unlink(missing_ok=True)
            self._receiver.close()
        self._sender.close()

    def send(self, topics: Iterable[str]) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return  # nobody has listened yet
        payload = "\n".join(topics).encode()
        for name in names:
            if name == self._name:
                continue
            try:
                self._sender.sendto(payload, _ABSTRACT_PREFIX + name.encode())
            except ConnectionRefusedError:
                # Its process is gone: so is the socket, and the name goes too.
                (self.directory / name).unlink(missing_ok=True)
            except OSError:
                pass  # a full buffer: that process has wake-ups enough to read the database

    def _run(self) -> None:
        assert self._receiver is not None
        while not self._stop.is_set():
            try:
                payload = self._receiver.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self._notifier.publish(payload.decode().split("\n"))
