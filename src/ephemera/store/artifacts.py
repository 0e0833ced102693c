"""Stored artifacts: look up, list, read (whole, or a range), retain and delete.

Artifact delete::

    ready --mark--> deleting --remove bytes--> --drop record--> gone   (each step idempotent)
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ephemera import ids
from ephemera.blobs import LocalPaths, RangedReads, artifact_key
from ephemera.context import Context
from ephemera.errors import InvalidInput, NotFound, StorageError
from ephemera.integrity import refuse_flagged
from ephemera.models import Artifact, Page
from ephemera.removal import remove_artifacts
from ephemera.store.limits import check_limit
from ephemera.store.paging import page
from ephemera.store.sessions import require_live


def get(ctx: Context, session_id: str, artifact_id: str) -> Artifact:
    require_live(ctx, session_id)
    artifact = ctx.catalog.get_artifact(session_id, artifact_id)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return artifact


def list_artifacts(
    ctx: Context, session_id: str, kind: str | None, cursor: str | None, limit: int
) -> Page[Artifact]:
    require_live(ctx, session_id)
    limit = check_limit(limit)
    if kind is not None:
        ids.check_kind(kind)
    if cursor is not None and not ids.is_artifact_id(cursor):
        raise InvalidInput("invalid cursor")
    rows = ctx.catalog.list_artifacts(session_id, kind, cursor, limit + 1)
    return page(rows, limit, lambda artifact: artifact.id)


def open_blob(ctx: Context, artifact: Artifact) -> BinaryIO:
    """The bytes of an artifact already looked up and authorised; never flagged ones."""
    refuse_flagged(artifact)
    return ctx.blobs.open(artifact_key(artifact.session_id, artifact.id))


def open_range(
    ctx: Context, ranged: RangedReads | None, artifact: Artifact, start: int, end: int
) -> BinaryIO:
    """Bytes ``start`` to ``end`` inclusive: only that range where the blob store reads
    ranges (``ranged``), otherwise the whole stream skipped to ``start``."""
    refuse_flagged(artifact)
    if ranged is not None:
        return ranged.open_range(artifact_key(artifact.session_id, artifact.id), start, end)
    stream = open_blob(ctx, artifact)
    try:
        while start > 0 and (skipped := len(stream.read(min(start, 1024 * 1024)))):
            start -= skipped
    except BaseException:
        stream.close()
        raise
    return stream


def local_path(local_paths: LocalPaths | None, session_id: str, artifact_id: str) -> Path | None:
    if local_paths is None:
        return None
    return local_paths.local_path(artifact_key(session_id, artifact_id))


def delete(ctx: Context, session_id: str, artifact_id: str) -> Artifact:
    require_live(ctx, session_id)
    artifact = ctx.catalog.mark_artifact_deleting(session_id, artifact_id, ctx.clock.now())
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} not found")
    # The mark is committed: bytes that will not go now are finished by the next cleanup.
    removal = remove_artifacts(ctx, [(session_id, artifact_id)], "delete", ctx.clock.now())
    if removal.failed:
        raise StorageError(f"cannot remove artifact {artifact_id}: {removal.failed[artifact_id]}")
    return artifact


def retain(ctx: Context, session_id: str, artifact_id: str, until: datetime | None) -> Artifact:
    require_live(ctx, session_id)
    if until is not None:
        if until.tzinfo is None:
            raise InvalidInput("retain_until must carry a time zone")
        try:
            until = until.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+00:01 is before year 1 in UTC
            raise InvalidInput("retain_until is outside the years 1 to 9999 in UTC") from None
    artifact = ctx.catalog.set_retention(session_id, artifact_id, until)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return artifact
