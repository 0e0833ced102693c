"""Resumable (tus) uploads: the upload row, its writer's claim, its recorded progress.

One writer at a time, across threads and replicas: ``claim_upload`` is a compare-and-set on
the row (a free or stale claim is taken, the generation goes up). Everything a writer
records afterwards (progress, a piece number, the finish) is conditional on its writer ID
and generation, so a writer that lost its claim changes nothing here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update

from ephemera.catalog.artifacts import make_ready
from ephemera.catalog.db import Database
from ephemera.catalog.predicates import live_session
from ephemera.catalog.schema import artifacts, sessions, uploads
from ephemera.errors import NotFound
from ephemera.models import Artifact, ArtifactState

OPEN = "open"
DONE = "done"


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    session_id: str
    length: int | None
    offset: int
    meta: dict[str, str]
    state: str
    created_at: datetime
    expires_at: datetime
    artifact_id: str | None
    writer: str | None
    generation: int
    heartbeat_at: datetime | None
    pieces: dict[str, Any]


def _row(r: Row[Any]) -> UploadRow:
    return UploadRow(
        id=r.id,
        session_id=r.session_id,
        length=r.length,
        offset=int(r.upload_offset),
        meta=dict(r.meta),
        state=r.state,
        created_at=r.created_at,
        expires_at=r.expires_at,
        artifact_id=r.artifact_id,
        writer=r.writer,
        generation=int(r.generation),
        heartbeat_at=r.heartbeat_at,
        pieces=dict(r.pieces),
    )


def insert_upload(db: Database, values: dict[str, Any]) -> bool:
    """Record a new upload if its session is live; False if it is not."""
    with db.write() as conn:
        live = conn.scalar(
            select(live_session(values["created_at"]))
            .where(sessions.c.id == values["session_id"])
            .with_for_update(read=True)
        )
        if not live:
            return False
        conn.execute(
            insert(uploads).values(
                **values, upload_offset=0, state=OPEN, generation=0, next_piece=1, pieces={}
            )
        )
        return True


def get_upload(db: Database, session_id: str, upload_id: str) -> UploadRow | None:
    with db.read() as conn:
        r = conn.execute(
            select(uploads).where(uploads.c.id == upload_id, uploads.c.session_id == session_id)
        ).first()
    return None if r is None else _row(r)


def _held(upload_id: str, writer: str, generation: int) -> Any:
    return (
        (uploads.c.id == upload_id)
        & (uploads.c.writer == writer)
        & (uploads.c.generation == generation)
        & (uploads.c.state == OPEN)
    )


def claim_upload(
    db: Database, upload_id: str, writer: str, now: datetime, stale_before: datetime
) -> tuple[UploadRow, bool] | None:
    """Take the upload for ``writer`` if it is open and its claim is free or stale.

    Returns the row as claimed (its new generation) and whether the last piece's writer let
    go cleanly just before (then that piece may be continued; a stale one may still be
    writing it), or
    None when another writer holds a live claim or the upload is not open.
    """
    with db.write() as conn:
        r = conn.execute(select(uploads).where(uploads.c.id == upload_id).with_for_update()).first()
        if r is None or r.state != OPEN:
            return None
        # The last piece may go on only if the claim that wrote it let go cleanly and nobody
        # claimed since: a claim taken over from a stale writer that then let go cleanly
        # (it failed before writing) does not make that stale writer stop.
        clean = r.writer is None and r.written_generation == r.generation
        if r.writer is not None and r.heartbeat_at is not None and r.heartbeat_at >= stale_before:
            return None
        claimed = conn.execute(
            update(uploads)
            .where(uploads.c.id == upload_id, uploads.c.generation == r.generation)
            .values(writer=writer, generation=r.generation + 1, heartbeat_at=now)
            .returning(*uploads.c)
        ).first()
    return None if claimed is None else (_row(claimed), clean)


def reserve_piece(db: Database, upload_id: str, writer: str, generation: int) -> int | None:
    """The next piece number, for this claim only; None if the claim is lost."""
    with db.write() as conn:
        n = conn.scalar(
            update(uploads)
            .where(_held(upload_id, writer, generation))
            .values(next_piece=uploads.c.next_piece + 1)
            .returning(uploads.c.next_piece)
        )
    return None if n is None else int(n) - 1


def record_progress(
    db: Database,
    upload_id: str,
    writer: str,
    generation: int,
    offset: int,
    pieces: dict[str, Any],
    now: datetime,
    length: int | None = None,
) -> bool:
    """Record a checkpoint (and a heartbeat); False if the claim is lost."""
    values: dict[str, Any] = {
        "upload_offset": offset,
        "pieces": pieces,
        "heartbeat_at": now,
        "written_generation": generation,
    }
    if length is not None:
        values["length"] = length
    with db.write() as conn:
        done = conn.execute(
            update(uploads).where(_held(upload_id, writer, generation)).values(**values)
        )
    return done.rowcount == 1


def heartbeat(db: Database, upload_id: str, writer: str, generation: int, now: datetime) -> bool:
    with db.write() as conn:
        done = conn.execute(
            update(uploads).where(_held(upload_id, writer, generation)).values(heartbeat_at=now)
        )
    return done.rowcount == 1


def release_upload(db: Database, upload_id: str, writer: str, generation: int) -> None:
    with db.write() as conn:
        conn.execute(
            update(uploads)
            .where(uploads.c.id == upload_id, uploads.c.writer == writer)
            .where(uploads.c.generation == generation)
            .values(writer=None, heartbeat_at=None)
        )


def begin_completion(
    db: Database, upload_id: str, writer: str, generation: int, pending: dict[str, Any]
) -> bool | None:
    """This claim's attempt at completing: the artifact's pending record, replacing one an
    earlier attempt left (it stopped before its commit). None if the claim is lost (nothing
    changed: the record is the new holder's), False if the session is not live."""
    with db.write() as conn:
        live = conn.scalar(
            select(live_session(pending["created_at"]))
            .where(sessions.c.id == pending["session_id"])
            .with_for_update(read=True)
        )
        if not live:
            return False
        held = conn.scalar(select(uploads.c.id).where(_held(upload_id, writer, generation)))
        if held is None:
            return None
        conn.execute(
            delete(artifacts).where(
                artifacts.c.id == pending["id"], artifacts.c.state == ArtifactState.PENDING
            )
        )
        conn.execute(insert(artifacts).values(**pending, state=ArtifactState.PENDING))
        return True


def abandon_completion(
    db: Database, upload_id: str, writer: str, generation: int, artifact_id: str
) -> str | None:
    """A failed attempt at completing lets go of what it owns: its pending record, while
    its claim still holds the upload (another claim's attempt is left alone). Returns the
    upload's state (``open``, ``done``), or None if the upload is gone (then its pending
    record goes too)."""
    with db.write() as conn:
        r = conn.execute(
            select(uploads.c.state, uploads.c.writer, uploads.c.generation)
            .where(uploads.c.id == upload_id)
            .with_for_update()
        ).first()
        if r is not None and (r.state != OPEN or (r.writer, r.generation) != (writer, generation)):
            return str(r.state)
        conn.execute(
            delete(artifacts).where(
                artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.PENDING
            )
        )
        return None if r is None else OPEN


def finalize_upload(
    db: Database,
    upload_id: str,
    writer: str,
    generation: int,
    artifact_id: str,
    session_id: str,
    values: dict[str, Any],
    quota_bytes: int | None,
    commit_bytes: Callable[[], object],
) -> Artifact | None:
    """pending -> ready and the upload done, in one transaction holding the session row,
    with ``commit_bytes`` (the bytes put at their key) run inside it, as
    ``finalize_artifact`` does: a close either happens entirely before (nothing is put in
    place) or after (it sees a ready artifact and removes its bytes). None (and nothing
    changed, nothing put in place) if the claim is lost."""
    with db.write() as conn:
        held = conn.execute(
            update(uploads)
            .where(_held(upload_id, writer, generation))
            .values(state=DONE, artifact_id=artifact_id, writer=None, heartbeat_at=None)
        )
        if held.rowcount != 1:
            if conn.scalar(select(uploads.c.id).where(uploads.c.id == upload_id)) is None:
                raise NotFound(f"upload {upload_id} not found")  # its session closed
            return None  # nothing was written
        artifact = make_ready(conn, artifact_id, session_id, values, quota_bytes, None)
        commit_bytes()
        return artifact


def delete_upload(db: Database, session_id: str, upload_id: str) -> UploadRow | None:
    """Remove an upload's row (open or done); the row as it was, or None if already gone."""
    with db.write() as conn:
        r = conn.execute(
            delete(uploads)
            .where(uploads.c.id == upload_id, uploads.c.session_id == session_id)
            .returning(*uploads.c)
        ).first()
    return None if r is None else _row(r)


def expired_uploads(
    db: Database, now: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[UploadRow]:
    """Uploads past their expiry, in (expires_at, id) order, a page after ``after``."""
    query = select(uploads).where(uploads.c.expires_at <= now)
    if after is not None:
        query = query.where(
            (uploads.c.expires_at > after[0])
            | ((uploads.c.expires_at == after[0]) & (uploads.c.id > after[1]))
        )
    with db.read() as conn:
        rows = conn.execute(query.order_by(uploads.c.expires_at, uploads.c.id).limit(limit))
        return [_row(r) for r in rows]


def drop_expired_upload(
    db: Database, upload_id: str, now: datetime, stale_before: datetime
) -> bool:
    """Remove an expired upload's row unless a live writer holds it; True if this call did."""
    with db.write() as conn:
        done = conn.execute(
            delete(uploads).where(
                uploads.c.id == upload_id,
                uploads.c.expires_at <= now,
                uploads.c.writer.is_(None) | (uploads.c.heartbeat_at < stale_before),
            )
        )
    return done.rowcount == 1


def open_upload_bytes(
    db: Database, session_id: str, now: datetime, other_than: str | None = None
) -> int:
    """What a session's open, unexpired uploads will store: each one's declared length (its
    recorded offset while the length is deferred); ``other_than`` left out."""
    query = select(
        func.coalesce(func.sum(func.coalesce(uploads.c.length, uploads.c.upload_offset)), 0)
    ).where(uploads.c.session_id == session_id, uploads.c.state == OPEN, uploads.c.expires_at > now)
    if other_than is not None:
        query = query.where(uploads.c.id != other_than)
    with db.read() as conn:
        return int(conn.scalar(query) or 0)


def live_upload_ids(db: Database, upload_ids: Sequence[str]) -> set[str]:
    if not upload_ids:
        return set()
    with db.read() as conn:
        return set(conn.scalars(select(uploads.c.id).where(uploads.c.id.in_(upload_ids))))


class UploadRows:
    """The resumable uploads' rows: :class:`~ephemera.catalog.Catalog`'s methods for them
    (one of its bases)."""

    _db: Database

    def insert_upload(self, values: dict[str, Any]) -> bool:
        return insert_upload(self._db, values)

    def get_upload(self, session_id: str, upload_id: str) -> UploadRow | None:
        return get_upload(self._db, session_id, upload_id)

    def claim_upload(
        self, upload_id: str, writer: str, now: datetime, stale_before: datetime
    ) -> tuple[UploadRow, bool] | None:
        return claim_upload(self._db, upload_id, writer, now, stale_before)

    def reserve_piece(self, upload_id: str, writer: str, generation: int) -> int | None:
        return reserve_piece(self._db, upload_id, writer, generation)

    def record_upload_progress(
        self,
        upload_id: str,
        writer: str,
        generation: int,
        offset: int,
        pieces: dict[str, Any],
        now: datetime,
        length: int | None = None,
    ) -> bool:
        return record_progress(self._db, upload_id, writer, generation, offset, pieces, now, length)

    def heartbeat_upload(self, upload_id: str, writer: str, generation: int, now: datetime) -> bool:
        return heartbeat(self._db, upload_id, writer, generation, now)

    def release_upload(self, upload_id: str, writer: str, generation: int) -> None:
        release_upload(self._db, upload_id, writer, generation)

    def finalize_upload(
        self,
        upload_id: str,
        writer: str,
        generation: int,
        artifact_id: str,
        session_id: str,
        values: dict[str, Any],
        quota_bytes: int | None,
        commit_bytes: Callable[[], object],
    ) -> Artifact | None:
        return finalize_upload(
            self._db,
            upload_id,
            writer,
            generation,
            artifact_id,
            session_id,
            values,
            quota_bytes,
            commit_bytes,
        )

    def begin_completion(
        self, upload_id: str, writer: str, generation: int, pending: dict[str, Any]
    ) -> bool | None:
        return begin_completion(self._db, upload_id, writer, generation, pending)

    def abandon_completion(
        self, upload_id: str, writer: str, generation: int, artifact_id: str
    ) -> str | None:
        return abandon_completion(self._db, upload_id, writer, generation, artifact_id)

    def delete_upload(self, session_id: str, upload_id: str) -> UploadRow | None:
        return delete_upload(self._db, session_id, upload_id)

    def expired_uploads(
        self, now: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[UploadRow]:
        return expired_uploads(self._db, now, after, limit)

    def drop_expired_upload(self, upload_id: str, now: datetime, stale_before: datetime) -> bool:
        return drop_expired_upload(self._db, upload_id, now, stale_before)

    def open_upload_bytes(
        self, session_id: str, now: datetime, other_than: str | None = None
    ) -> int:
        return open_upload_bytes(self._db, session_id, now, other_than)

    def live_upload_ids(self, upload_ids: Sequence[str]) -> set[str]:
        return live_upload_ids(self._db, upload_ids)
