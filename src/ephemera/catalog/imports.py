"""The import ledger: each file version imported into a session, and the artifact it became.

An entry is written only by ``record_import``, inside the transaction that makes its artifact
ready (``artifacts.finalize_import``): a crash leaves both or neither. The unique
(session, origin key) makes a second import of one file version a duplicate key, which the
transaction's caller turns into a Conflict.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, text, update

from ephemera.catalog.db import Database
from ephemera.catalog.predicates import live_session
from ephemera.catalog.schema import import_ledger, sessions
from ephemera.models import ImportEntry, ImportOrigin


def _key(*parts: str | int) -> str:
    # A JSON array joins the parts unambiguously, whatever characters they hold.
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def origin_key(origin: ImportOrigin) -> str:
    return _key(origin.source, origin.path, origin.size, origin.mtime_ns)


def source_key(source: str) -> str:
    return _key(source)


def path_key(source: str, path: str) -> str:
    return _key(source, path)


def entry_model(row: Any) -> ImportEntry:
    return ImportEntry(
        session_id=row.session_id,
        origin=ImportOrigin(row.source, row.path, int(row.size), int(row.mtime_ns)),
        artifact_id=row.artifact_id,
        sha256=row.sha256,
        replaces=row.replaces,
        imported_at=row.imported_at,
        task_id=row.task_id,
    )


def record_import(
    conn: Connection,
    session_id: str,
    origin: ImportOrigin,
    artifact_id: str,
    sha256: str,
    now: datetime,
) -> ImportEntry:
    """Insert the entry, replacing the latest earlier entry of the same (source, path); the
    entry as written.

    Runs in the caller's transaction; a duplicate origin raises IntegrityError there.
    """
    versions = path_key(origin.source, origin.path)
    _serialise_versions(conn, session_id, versions)
    row = conn.execute(
        _RECORD,
        {
            "session_id": session_id,
            "source": origin.source,
            "path": origin.path,
            "size": origin.size,
            "mtime_ns": origin.mtime_ns,
            "origin_key": origin_key(origin),
            "source_key": source_key(origin.source),
            "path_key": versions,
            "artifact_id": artifact_id,
            "sha256": sha256,
            "imported_at": now,
        },
    ).one()
    return entry_model(row)


_RECORDED = (
    "session_id",
    "source",
    "path",
    "size",
    "mtime_ns",
    "origin_key",
    "source_key",
    "path_key",
    "artifact_id",
    "sha256",
    "imported_at",
)

# Built once: this runs inside the commit transaction, which on SQLite holds the one writer
# turn. The earlier version is found inside the INSERT: one statement, and the row it
# returns is the entry, with no read-back.
_RECORD = (
    insert(import_ledger)
    .values(
        {
            **{name: bindparam(name) for name in _RECORDED},
            "replaces": select(import_ledger.c.artifact_id)
            .where(
                import_ledger.c.session_id == bindparam("session_id"),
                import_ledger.c.path_key == bindparam("path_key"),
            )
            .order_by(import_ledger.c.id.desc())
            .limit(1)
            .scalar_subquery(),
            "task_id": None,
        }
    )
    .returning(*import_ledger.c)
)


def _serialise_versions(conn: Connection, session_id: str, versions: str) -> None:
    """PostgreSQL: one commit at a time per (session, path) until the transaction ends.

    The session row is only locked shared; without this two versions committed at once both
    read the same latest entry and claim to replace it. (SQLite has one writer at a time.)
    The lock stands also for a path with no entry yet, which no row lock could.
    """
    if conn.dialect.name == "postgresql":
        digest = hashlib.sha256(f"import-path:{session_id}:{versions}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def find_import(db: Database, session_id: str, origin: ImportOrigin) -> ImportEntry | None:
    with db.read() as conn:
        row = conn.execute(
            select(import_ledger).where(
                import_ledger.c.session_id == session_id,
                import_ledger.c.origin_key == origin_key(origin),
            )
        ).first()
    return entry_model(row) if row is not None else None


def find_live_import(
    db: Database, session_id: str, origin: ImportOrigin, now: datetime
) -> tuple[bool, ImportEntry | None]:
    """Whether the session is live, and its entry of ``origin`` if any: one read, the whole
    cost of importing a file the ledger holds already."""
    entry = (
        select(import_ledger)
        .where(
            import_ledger.c.session_id == session_id,
            import_ledger.c.origin_key == origin_key(origin),
        )
        .subquery()
    )
    with db.read() as conn:
        row = conn.execute(
            select(live_session(now).label("live"), entry)
            .select_from(sessions.outerjoin(entry, entry.c.session_id == sessions.c.id))
            .where(sessions.c.id == session_id)
        ).first()
    if row is None or not row.live:
        return False, None
    return True, entry_model(row) if row.artifact_id is not None else None


def import_of_artifact(db: Database, session_id: str, artifact_id: str) -> ImportEntry | None:
    with db.read() as conn:
        row = conn.execute(
            select(import_ledger).where(
                import_ledger.c.session_id == session_id,
                import_ledger.c.artifact_id == artifact_id,
            )
        ).first()
    return entry_model(row) if row is not None else None


def list_imports(
    db: Database, session_id: str, source: str | None, after: int | None, limit: int
) -> list[tuple[int, ImportEntry]]:
    """A page of a session's entries (of one source) in ledger order, with their IDs."""
    query = (
        select(import_ledger)
        .where(import_ledger.c.session_id == session_id)
        .order_by(import_ledger.c.id)
        .limit(limit)
    )
    if source is not None:
        query = query.where(import_ledger.c.source_key == source_key(source))
    if after is not None:
        query = query.where(import_ledger.c.id > after)
    with db.read() as conn:
        return [(int(r.id), entry_model(r)) for r in conn.execute(query)]


def claim_import_task(conn: Connection, session_id: str, artifact_id: str, task_id: str) -> bool:
    """Record the entry's follow-up task where none is yet; whether this call recorded it.

    Runs in the transaction that inserts the task: the loser of a race inserts nothing. On
    PostgreSQL a racing update waits for the winner's commit, then finds the task set.
    """
    done = conn.execute(
        update(import_ledger)
        .where(
            import_ledger.c.session_id == session_id,
            import_ledger.c.artifact_id == artifact_id,
            import_ledger.c.task_id.is_(None),
        )
        .values(task_id=task_id)
    )
    return done.rowcount == 1
