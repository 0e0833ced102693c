"""Named locks: one scheduler at a time across every process on one database."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ephemera.catalog.db import Database, translate
from ephemera.catalog.schema import locks


class AdvisoryLocks:
    """PostgreSQL session advisory locks, each held on a connection kept for it.

    They live as long as the connection that took them.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._held: dict[str, Connection] = {}
        self._guard = threading.Lock()

    def take(self, name: str) -> bool:
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with self._guard:
            held = self._held.get(name)
            if held is not None:
                try:
                    held.exec_driver_sql("SELECT 1")
                    return True
                except SQLAlchemyError:
                    # The connection, and with it the lock, is gone: try to take it again.
                    with contextlib.suppress(SQLAlchemyError):
                        held.invalidate()
                        held.close()
                    del self._held[name]
            try:
                conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            except SQLAlchemyError as exc:
                raise translate(exc) from exc
            try:
                got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
            except SQLAlchemyError as exc:
                conn.close()
                raise translate(exc) from exc
            if not got:
                conn.close()
                return False
            self._held[name] = conn
            return True

    def release_all(self) -> None:
        with self._guard:
            for conn in self._held.values():
                # Invalidate, not close: a pooled connection would keep the lock for its next user.
                with contextlib.suppress(SQLAlchemyError):
                    conn.invalidate()
                    conn.close()
            self._held.clear()


def try_lock(
    db: Database, advisory: AdvisoryLocks, name: str, holder: str, now: datetime, until: datetime
) -> bool:
    """Take or extend a named lock; False while someone else holds it unexpired.

    On PostgreSQL it is a session advisory lock on a connection kept for it: held for
    as long as this process lives (``until`` is not needed), released by the server the
    moment the process dies, and independent of the replicas' clocks. Elsewhere it is a
    row with an expiry.
    """
    if db.dialect == "postgresql":
        return advisory.take(name)
    with db.write() as conn:
        row = conn.execute(select(locks).where(locks.c.name == name).with_for_update()).first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(locks).values(name=name, holder=holder, expires_at=until))
            except IntegrityError:
                return False
            return True
        if row.holder != holder and row.expires_at > now:
            return False
        conn.execute(
            update(locks).where(locks.c.name == name).values(holder=holder, expires_at=until)
        )
        return True
