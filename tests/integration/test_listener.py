"""The PostgreSQL listener notices a connection that died silently: it reconnects, wakes
every subscriber (notifications may have been lost) and says so in its log."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from ephemera.catalog import session_topic
from ephemera.catalog.db import CHANNEL, open_database
from ephemera.catalog.notify import Notifier, PgListener
from tests.databases import PostgresDatabases

TOPIC = session_topic("s1")


class FreezingProxy:
    """A TCP relay to PostgreSQL whose open connections can be frozen: their sockets stay
    open and their bytes are accepted, but nothing goes through any more (as when the
    peer is gone behind a firewall that keeps answering). Connections opened later work."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._frozen: list[threading.Event] = []
        self._sockets: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            frozen = threading.Event()
            self._frozen.append(frozen)
            self._sockets += [client, server]
            self.connections += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, frozen), daemon=True
                ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, frozen: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                if frozen.is_set():
                    continue  # swallowed: the other end never hears of it
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if not frozen.is_set():
                for end in (source, sink):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        for frozen in self._frozen:
            frozen.set()

    def close(self) -> None:
        self._listener.close()
        for end in self._sockets:
            end.close()


@pytest.fixture
def database_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    url = postgres_databases.empty()
    try:
        yield url
    finally:
        postgres_databases.drop(url)


def notify(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, TOPIC))


def test_a_silently_dead_connection_is_replaced_and_everyone_woken(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    parts = urlsplit(database_url)
    proxy = FreezingProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
    database = open_database(urlunsplit(parts._replace(netloc=netloc)))
    notifier = Notifier()
    listener = PgListener(database.engine, notifier, check_every_s=0.5, check_timeout_s=1)
    try:
        with notifier.subscribe(TOPIC) as wakeup, caplog.at_level(logging.INFO, "ephemera"):
            listener.start()
            assert listener.listening.wait(10)
            while wakeup.wait(1.5):  # the wake-all of a new connection, spread over 1 s
                pass
            notify(database_url)
            assert wakeup.wait(5), "a notification reaches the subscriber"

            proxy.freeze()
            notify(database_url)  # lost: the frozen connection never delivers it
            # Found dead by a check, replaced, and everyone woken: within check + timeout,
            # the pause before reconnecting and the wake-all's spread.
            assert wakeup.wait(10), "the subscriber is woken after the connection is replaced"
            assert listener.listening.wait(5)
            assert proxy.connections == 2
            assert any(
                "answered no check" in r.getMessage() and r.levelno == logging.WARNING
                for r in caplog.records
            ), caplog.text
            while wakeup.wait(1.5):
                pass
            notify(database_url)
            assert wakeup.wait(5), "the new connection delivers notifications"
    finally:
        listener.stop()
        database.engine.dispose()
        proxy.close()
