"""The catalog's database: engine creation, SQLite pragmas, transactions, error translation.

Writes run in short transactions that take the write lock up front (``BEGIN IMMEDIATE`` on
SQLite; row locks on PostgreSQL), so two writers never deadlock on a lock upgrade.
A connection is checked out by one thread for one transaction and returned: connections are
never shared across threads. No SQLAlchemy error leaves a transaction untranslated.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from ephemera.errors import Conflict, InsufficientStorage, InvalidInput, StorageError
from ephemera.extras import require
from ephemera.fsutil import create_file, make_dirs
from ephemera.urls import redact_url

CONNECT_TIMEOUT_S = 5

# SQLite's extended result codes for a duplicate key; PostgreSQL's unique_violation.
_SQLITE_DUPLICATE = (sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
_PG_UNIQUE_VIOLATION = "23505"

# A write transaction's own state on its connection (see ``WriteState``).
_STATE = "ephemera_write_state"
# The one PostgreSQL channel of wake-ups; the payload is the topic.
CHANNEL = "ephemera"


class Database:
    """An engine and the transactions every catalog statement runs in."""

    def __init__(self, url: str, engine: Engine, *, create: bool, sqlite_file: Path | None) -> None:
        """``create=False``: the database must exist already (see ``migrate.prepare``)."""
        self.url = url
        self.engine = engine
        self.dialect = engine.dialect.name
        self.create = create
        self.sqlite_file = sqlite_file
        # SQLite has one writer at a time. Writers of this process queue here, woken in turn,
        # instead of in SQLite's busy handler, which polls with growing sleeps.
        self._writer_turn = threading.Lock() if self.dialect == "sqlite" else None
        # Called with the topics a write transaction announced, once it has committed.
        self.committed: Callable[[Iterable[str]], None] | None = None
        # The time written by what a transaction records of itself (its events): the store's
        # clock, which also decides what is old enough to prune.
        self.now: Callable[[], datetime] = _utc_now

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise translate(exc) from exc

    @contextmanager
    def write(self, *, duplicate: str | None = None) -> Iterator[Connection]:
        """A write transaction. ``duplicate``: the Conflict message for a duplicate key,
        where the caller expects one; any other database error is a StorageError."""
        state = WriteState(self.now)
        try:
            with (
                self._writer_turn or contextlib.nullcontext(),
                self.engine.connect().execution_options(ephemera_write=True) as conn,
                conn.begin(),
            ):
                conn.info[_STATE] = state
                try:
                    yield conn
                    for key, flush in state.flushes.items():
                        flush(conn, state.deferred[key])
                finally:
                    # The DBAPI connection goes back to the pool: its info must not carry over.
                    del conn.info[_STATE]
        except SQLAlchemyError as exc:
            raise translate(exc, duplicate) from exc
        if state.topics and self.committed is not None:
            self.committed(state.topics)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class WriteState:
    """What a write transaction announces (topics) and defers to its end (see ``defer``)."""

    now: Callable[[], datetime]
    topics: set[str] = field(default_factory=set)
    deferred: dict[str, list[Any]] = field(default_factory=dict)
    flushes: dict[str, Callable[[Connection, list[Any]], None]] = field(default_factory=dict)


def defer(
    conn: Connection, key: str, items: Iterable[Any], flush: Callable[[Connection, list[Any]], None]
) -> None:
    """Queue ``items`` for ``flush``, which writes all of ``key``'s at the end of this write
    transaction, after the statements of the code that ran in it, before the commit."""
    state: WriteState = conn.info[_STATE]
    state.deferred.setdefault(key, []).extend(items)
    state.flushes.setdefault(key, flush)


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A part of this write transaction that fails alone: on an exception its statements
    are rolled back to a SAVEPOINT and what it deferred is dropped; the transaction goes on."""
    state: WriteState = conn.info[_STATE]
    marks = {key: len(items) for key, items in state.deferred.items()}
    try:
        with conn.begin_nested():
            yield
    except BaseException:
        for key in list(state.deferred):
            if key in marks:
                del state.deferred[key][marks[key] :]
            else:
                del state.deferred[key], state.flushes[key]
        raise


def write_time(conn: Connection) -> datetime:
    """The present by the clock of this write transaction's database (``Database.now``)."""
    state: WriteState = conn.info[_STATE]
    return state.now()


def announce(conn: Connection, topic: str) -> None:
    """Wake whoever waits on ``topic`` once this write transaction commits.

    In this process the Database's ``committed`` callback runs after the commit; on
    PostgreSQL a NOTIFY, which the server delivers at the commit (and drops with a
    rollback), reaches the other processes on the database.
    """
    topics = conn.info[_STATE].topics
    if topic in topics:
        return
    topics.add(topic)
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_notify(CHANNEL, topic)))


def open_database(
    url: str, *, create: bool = True, file_mode: int = 0o600, dir_mode: int = 0o700
) -> Database:
    """Check the URL, create an SQLite file (and its directories) unless ``create=False``,
    and build the engine. Connects to nothing."""
    try:
        parsed = make_url(url)
        dialect = parsed.get_backend_name()
    except (ArgumentError, ValueError) as exc:
        raise InvalidInput(f"invalid database URL {redact_url(url)!r}: {exc}") from None
    sqlite_file: Path | None = None
    if dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
        sqlite_file = Path(parsed.database)
        if create:
            _create_sqlite_file(sqlite_file, file_mode, dir_mode)
    # An unreachable server fails in seconds instead of at the OS's TCP timeout.
    connect_args: dict[str, Any] = {}
    if dialect == "postgresql":
        # Before SQLAlchemy imports the driver: a missing one is one line naming the extra.
        require("postgres", "PostgreSQL")
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(url, pool_pre_ping=dialect != "sqlite", connect_args=connect_args)
    except (ArgumentError, ImportError) as exc:
        raise InvalidInput(f"unsupported database URL {redact_url(url)!r}: {exc}") from None
    if dialect == "sqlite":
        _configure_sqlite(engine)
    return Database(url, engine, create=create, sqlite_file=sqlite_file)


def translate(exc: SQLAlchemyError, duplicate: str | None = None) -> Conflict | StorageError:
    """The ephemera error for a database failure; Conflict(``duplicate``) for a duplicate key."""
    orig = getattr(exc, "orig", None)
    if duplicate is not None and isinstance(exc, IntegrityError) and _is_duplicate(orig):
        return Conflict(duplicate)
    # SQLITE_FULL, and PostgreSQL's disk_full: the one database failure cleanup can mend.
    if (
        getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or getattr(orig, "sqlstate", None) == "53100"
    ):
        return InsufficientStorage(
            "the database volume is full: nothing was written (cleanup frees space)"
        )
    return StorageError(f"database error: {exc.__class__.__name__}")


def _is_duplicate(orig: object) -> bool:
    return (
        getattr(orig, "sqlite_errorcode", None) in _SQLITE_DUPLICATE
        or getattr(orig, "sqlstate", None) == _PG_UNIQUE_VIOLATION
    )


def lock_first(conn: Connection, rows: Any, *, read: bool = False) -> None:
    """PostgreSQL: lock the rows a check is about before the statement that checks.

    Under READ COMMITTED a statement sees what was committed when it began; one that waits
    for a row lock and then re-checks its condition still reads its subqueries (leases) as
    of its start. Taking the lock in an earlier statement makes the check see every
    protector that held the row first: protectors (leases, tasks) lock what they protect
    exclusively, cleaners lock it before they look. SQLite has one writer at a time and
    needs none of this.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(rows.with_for_update(read=read)).all()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("ephemera_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _create_sqlite_file(path: Path, file_mode: int, dir_mode: int) -> None:
    # SQLite creates its -wal and -shm files with the database file's mode, so this one
    # creation decides all three.
    make_dirs(path.parent, dir_mode)
    with contextlib.suppress(FileExistsError):
        os.close(create_file(path, file_mode))


def ping(db: Database) -> None:
    with db.read() as conn:
        conn.execute(select(1))
