"""The one delete path: bytes first, then records, then hooks.

Everything that removes what was stored (an explicit close, cleanup, the outputs a task's end
drops, verification's repair, recovery) comes here once its items are marked (``deleting``
artifacts, ``closing`` sessions). Marked items are invisible and finished by whoever gets to
them: a crash, or a blob that will not go, leaves the mark and its record for the next run.
A record is counted (and its hook fired) by the call whose delete statement removed it, so
two removers at once never both report one item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ephemera.blobs import artifact_key, session_prefix
from ephemera.blobs.resumable import ResumableBlobs
from ephemera.catalog.sessions import DiscardUploads
from ephemera.context import Context
from ephemera.errors import EphemeraError
from ephemera.hooks import ArtifactDeleted, SessionClosed


@dataclass(frozen=True, slots=True)
class RemovedArtifact:
    session_id: str
    artifact_id: str
    size: int


@dataclass(frozen=True, slots=True)
class Removal:
    removed: list[RemovedArtifact]
    failed: dict[str, str]  # artifact ID -> why its bytes are still there


def remove_artifacts(
    context: Context,
    marked: Sequence[tuple[str, str]],
    reason: str,
    at: datetime,
    *,
    frees_bytes: bool = True,
) -> Removal:
    """Remove (session, artifact) pairs marked ``deleting``.

    ``frees_bytes=False`` (bytes already lost) tells hooks and the caller a size of 0.
    """
    failed = remove_bytes(context, marked)
    return drop_records(context, marked, failed, reason, at, frees_bytes=frees_bytes)


def remove_bytes(context: Context, marked: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The first half of ``remove_artifacts``: the bytes of marked pairs, and no database.

    Returns artifact ID -> why its bytes are still there. It may run on another thread
    than the rest of the delete (cleanup removes one batch's bytes while it marks the next).
    """
    if not marked:
        return {}
    keys = {artifact_key(s, a): a for s, a in marked}
    try:
        failed = context.blobs.delete_many(list(keys))
    except EphemeraError as exc:
        failed = dict.fromkeys(keys, exc.message)
    return {keys[key]: error for key, error in failed.items()}


def drop_records(
    context: Context,
    marked: Sequence[tuple[str, str]],
    failed: Mapping[str, str],
    reason: str,
    at: datetime,
    *,
    frees_bytes: bool = True,
) -> Removal:
    """The second half of ``remove_artifacts``, once ``remove_bytes`` returned ``failed``:
    the records of the pairs whose bytes went, then their hooks. The rest stay marked."""
    gone = [artifact_id for _, artifact_id in marked if artifact_id not in failed]
    removed = [
        RemovedArtifact(session_id, artifact_id, size if frees_bytes else 0)
        for session_id, artifact_id, size in context.catalog.drop_deleting_artifacts(gone)
    ]
    # Told as each batch is committed: memory stays flat however much is deleted.
    for item in removed:
        context.hooks.artifact_deleted(
            ArtifactDeleted(item.session_id, item.artifact_id, item.size, reason, at)
        )
    return Removal(removed, dict(failed))


def remove_session(
    context: Context,
    session_id: str,
    reason: str,
    at: datetime,
    *,
    told: tuple[int, int] | None = None,
) -> tuple[int, int] | None:
    """Remove a ``closing`` session: its prefix in one sweep, then its records.

    Returns the number and bytes of the artifact records removed, or None when another
    remover dropped the session first. StorageError (the sweep failed) leaves the session
    ``closing``. The hook tells ``told`` (count, bytes) if given (an explicit close reports
    the ready artifacts it answered with), else what was dropped.
    """
    context.blobs.delete_prefix(session_prefix(session_id))
    dropped = context.catalog.drop_session(session_id)
    if dropped is not None:
        _told_closed(context, session_id, told or dropped, reason, at)
    return dropped


@dataclass(frozen=True, slots=True)
class SessionRemoval:
    removed: dict[str, tuple[int, int]]  # session ID -> artifact records and bytes removed
    failed: dict[str, str]  # session ID -> why its bytes are still there


def remove_sessions(
    context: Context, session_ids: Sequence[str], reason: str, at: datetime
) -> SessionRemoval:
    """Remove many ``closing`` sessions: each prefix, then the records of those whose bytes
    went, in one transaction. A session whose sweep failed stays ``closing``."""
    failed: dict[str, str] = {}
    swept: list[str] = []
    for session_id in session_ids:
        try:
            context.blobs.delete_prefix(session_prefix(session_id))
        except EphemeraError as exc:
            failed[session_id] = exc.message
        else:
            swept.append(session_id)
    removed = context.catalog.drop_sessions(swept)
    for session_id, dropped in removed.items():
        _told_closed(context, session_id, dropped, reason, at)
    return SessionRemoval(removed, failed)


def upload_discarder(context: Context) -> DiscardUploads | None:
    """Removes the bytes of a dropped session's open resumable uploads: the catalog runs it
    inside the drop (``Catalog.discard_uploads_with``), so a failure drops nothing and the
    session stays ``closing``."""
    blobs = context.blobs
    if not isinstance(blobs, ResumableBlobs):
        return None

    def discard(unfinished: list[tuple[str, dict[str, Any]]]) -> None:
        for upload_id, pieces in unfinished:
            blobs.discard_upload(upload_id, pieces)

    return discard


def _told_closed(
    context: Context, session_id: str, dropped: tuple[int, int], reason: str, at: datetime
) -> None:
    count, size = dropped
    context.hooks.session_closed(SessionClosed(session_id, count, size, reason, at))
