"""Where an incremental maintenance walk stopped: one named position, kept across restarts.

A walk that does a slice of its work per tick (the scheduled orphan reconciliation) saves
its position after each slice, so a new process, or another replica sharing the database,
carries on from there instead of starting over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from ephemera.catalog.db import Database
from ephemera.catalog.schema import cleanup_cursors


@dataclass(frozen=True, slots=True)
class CleanupCursor:
    name: str
    position: str
    updated_at: datetime


def cleanup_cursor(db: Database, name: str) -> CleanupCursor | None:
    with db.read() as conn:
        row = conn.execute(select(cleanup_cursors).where(cleanup_cursors.c.name == name)).first()
    return None if row is None else CleanupCursor(row.name, row.position, row.updated_at)


def save_cleanup_cursor(db: Database, name: str, position: str, at: datetime) -> None:
    """Set the position; last writer wins (two walkers at once only redo a slice)."""
    row = {"name": name, "position": position, "updated_at": at}
    key, changes = [cleanup_cursors.c.name], {"position": position, "updated_at": at}
    # Each dialect's own insert, imported here: a process imports only its database's dialect.
    if db.dialect == "postgresql":
        from sqlalchemy.dialects import postgresql as dialect
    else:
        from sqlalchemy.dialects import sqlite as dialect  # type: ignore[no-redef]
    statement = (
        dialect.insert(cleanup_cursors)
        .values(row)
        .on_conflict_do_update(index_elements=key, set_=changes)
    )
    with db.write() as conn:
        conn.execute(statement)


class CursorRows:
    """The cleanup cursors: :class:`~ephemera.catalog.Catalog`'s methods for them (one of its
    bases)."""

    _db: Database

    def cleanup_cursor(self, name: str) -> CleanupCursor | None:
        return cleanup_cursor(self._db, name)

    def save_cleanup_cursor(self, name: str, position: str, at: datetime) -> None:
        save_cleanup_cursor(self._db, name, position, at)
