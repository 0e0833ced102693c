"""Resumable uploads (the library side of tus): create, append, inspect, terminate, finish.

An upload is a row in the catalog (its checked metadata, length, recorded offset, pieces)
and pieces in the blob store (:mod:`ephemera.blobs.resumable`). Appending::

    claim the row (compare-and-set; a stale claim is taken over, a live one waited for, then
    423) --> check the offset (409) --> write, and every checkpoint: make the bytes durable,
    then record offset and pieces under the claim --> release

    Only recorded offsets count, so a SIGKILL at any instant leaves the last checkpoint, and
    the next HEAD tells it. A writer that lost its claim fails its next record and stops.

Finishing (the upload's length is reached) commits like every other upload (guarantee 3):
a pending artifact, the recorded bytes assembled at its key, the whole body's sha256 checked,
then, in one transaction holding the session row, pending -> ready and the upload done.

The whole body's sha256: a hash object cannot be stored, so this process keeps the running
hash of each upload it appended to, with the offset it covers; it is valid exactly while that
offset is the recorded one (recorded bytes never change). When another process (a replica,
or this one after a restart) wrote part of the body, the assembled bytes are hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ephemera import ids
from ephemera.blobs import artifact_key
from ephemera.blobs.resumable import PieceWriter, ResumableBlobs
from ephemera.catalog.resumable import DONE, UploadRow
from ephemera.context import Context
from ephemera.errors import (
    Conflict,
    EphemeraError,
    InvalidInput,
    InvalidMetadata,
    Locked,
    NotFound,
    StorageError,
    TooLarge,
    UploadChecksumMismatch,
    UploadExpired,
)
from ephemera.models import Artifact
from ephemera.store.sessions import session_not_found
from ephemera.store.uploads import artifact_values, check_sha256

CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
HEARTBEAT_S = 1.0
WAIT_STEP_S = 0.1
HASHES_KEPT = 256
# Metadata keys read at creation; others (relativePath, ...) are kept but mean nothing here.
NAME_KEYS = ("filename", "name")
TYPE_KEYS = ("content_type", "filetype")


@dataclass(frozen=True, slots=True)
class UploadStatus:
    id: str
    session_id: str
    offset: int
    length: int | None
    expires_at: datetime
    metadata: dict[str, str]
    artifact_id: str | None

    @property
    def finished(self) -> bool:
        return self.artifact_id is not None


def _status(row: UploadRow) -> UploadStatus:
    return UploadStatus(
        row.id, row.session_id, row.offset, row.length, row.expires_at, row.meta, row.artifact_id
    )


def _first(meta: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if meta.get(key):
            return meta[key]
    return None


def check_metadata(ctx: Context, meta: dict[str, str], now: datetime) -> dict[str, Any]:
    """The artifact values ``meta`` stands for, checked as ``POST …/artifacts`` checks them."""
    name = _first(meta, NAME_KEYS)
    if not name:
        raise InvalidMetadata("a file name is required (Upload-Metadata 'filename')")
    expires_in_s: int | None = None
    try:
        if meta.get("expires_in_s"):
            expires_in_s = int(meta["expires_in_s"])
        if meta.get("sha256"):
            check_sha256(meta["sha256"])
        return artifact_values(
            ctx.settings,
            name,
            meta.get("kind") or "input",
            _first(meta, TYPE_KEYS),
            meta.get("storage") or None,
            expires_in_s,
            now,
        )
    except ValueError as exc:
        message = exc.message if isinstance(exc, EphemeraError) else "expires_in_s must be a number"
        raise InvalidMetadata(message) from None


class RunningHashes:
    """The running sha256 of uploads this process appended to: (offset covered, hash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def take(self, upload_id: str, offset: int) -> Any | None:
        with self._lock:
            kept = self._kept.get(upload_id)
            return kept[1].copy() if kept is not None and kept[0] == offset else None

    def keep(self, upload_id: str, offset: int, hasher: Any) -> None:
        with self._lock:
            self._kept[upload_id] = (offset, hasher.copy())
            self._kept.move_to_end(upload_id)
            while len(self._kept) > HASHES_KEPT:
                self._kept.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        with self._lock:
            self._kept.pop(upload_id, None)


class Resumables:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._blobs = ctx.blobs if isinstance(ctx.blobs, ResumableBlobs) else None
        # One ID per process; each claim adds its generation.
        self.writer_id = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.hashes = RunningHashes()

    @property
    def blobs(self) -> ResumableBlobs:
        if self._blobs is None:
            raise StorageError("this blob store does not support resumable uploads")
        return self._blobs

    @property
    def claim_timeout_s(self) -> float:
        return self._ctx.settings.tus_claim_timeout_s

    @property
    def beat_s(self) -> float:
        """How often a live writer heartbeats: well within the claim timeout, however short
        it is set, so a late beat or two never lets another request take the upload over."""
        return min(HEARTBEAT_S, self.claim_timeout_s / 4)

    def create(self, session_id: str, length: int | None, meta: dict[str, str]) -> UploadStatus:
        """Check everything up front: a bad request creates nothing."""
        ctx = self._ctx
        self.blobs  # noqa: B018  (refuse before recording anything)
        now = ctx.clock.now()
        check_metadata(ctx, meta, now)
        if length is not None:
            check_length(ctx, session_id, length)
        ctx.volume.check_room()
        upload_id = ids.new_uuid7()
        values = {
            "id": upload_id,
            "session_id": session_id,
            "length": length,
            "meta": meta,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ctx.settings.tus_upload_ttl_s),
        }
        if not ctx.catalog.insert_upload(values):
            raise session_not_found(session_id)
        row = ctx.catalog.get_upload(session_id, upload_id)
        assert row is not None
        return _status(row)

    def status(self, session_id: str, upload_id: str) -> UploadStatus:
        return _status(self._row(session_id, upload_id))

    def _row(self, session_id: str, upload_id: str) -> UploadRow:
        row = self._ctx.catalog.get_upload(session_id, upload_id)
        if row is None:
            raise NotFound(f"upload {upload_id} not found")
        if row.state != DONE and row.expires_at <= self._ctx.clock.now():
            raise UploadExpired(f"upload {upload_id} expired at {row.expires_at.isoformat()}")
        return row

    def terminate(self, session_id: str, upload_id: str) -> None:
        """Remove the upload and its bytes (a finished upload's artifact stays)."""
        row = self._ctx.catalog.delete_upload(session_id, upload_id)
        if row is None:
            raise NotFound(f"upload {upload_id} not found")
        self.hashes.drop(upload_id)
        if row.state != DONE:
            self.blobs.discard_upload(upload_id, row.pieces)
            # What an attempt at completing left: its pending record, the bytes at the key
            # (a completed S3 object).
            self._ctx.catalog.delete_pending_artifact(upload_id)
            self._ctx.blobs.delete(artifact_key(session_id, upload_id))

    def begin_append(
        self,
        session_id: str,
        upload_id: str,
        offset: int,
        *,
        length: int | None = None,
        body_size: int | None = None,
        checksum: tuple[str, bytes] | None = None,
        wait_s: float | None = None,
    ) -> Appender:
        """Claim the upload for one request's bytes; every check fails before a byte is kept.

        A live claim is waited for up to ``wait_s`` (by default until it would go stale),
        then this is Locked."""
        row = self._row(session_id, upload_id)
        if row.state == DONE:
            raise Conflict(f"upload {upload_id} is finished: artifact {row.artifact_id}")
        if checksum is not None and checksum[0] not in CHECKSUMS:
            raise InvalidInput(f"unsupported checksum algorithm {checksum[0][:20]!r}")
        _check_bounds(self._ctx, row, offset, length, body_size)
        self._ctx.volume.check_room()
        row, clean = self._claim(session_id, upload_id, wait_s)
        try:
            if row.offset != offset:
                raise Conflict(f"Upload-Offset is {offset}, the upload's offset is {row.offset}")
            _check_bounds(self._ctx, row, offset, length, body_size)
            if length is not None and row.length is None:
                check_length(self._ctx, session_id, length, upload_id)
            elif row.length is None:
                # Length deferred: what this request would bring the upload to.
                reach = offset + (body_size or 0)
                check_length(self._ctx, session_id, reach, upload_id, f"offset {reach}")
            return Appender(self, row, clean, length, checksum)
        except BaseException:
            self._ctx.catalog.release_upload(upload_id, self.writer_id, row.generation)
            raise

    def _claim(
        self, session_id: str, upload_id: str, wait_s: float | None = None
    ) -> tuple[UploadRow, bool]:
        """Take the row: a free or stale claim at once, a live one if it goes stale within
        ``wait_s`` (its holder stopped sending); a holder that keeps sending wins, and this
        is 423."""
        ctx = self._ctx
        deadline = time.monotonic() + (self.claim_timeout_s + 1 if wait_s is None else wait_s)
        while True:
            now = ctx.clock.now()
            stale_before = now - timedelta(seconds=self.claim_timeout_s)
            claimed = ctx.catalog.claim_upload(upload_id, self.writer_id, now, stale_before)
            if claimed is not None:
                return claimed
            row = self._row(session_id, upload_id)
            if row.state == DONE:
                raise Conflict(f"upload {upload_id} is finished: artifact {row.artifact_id}")
            if time.monotonic() >= deadline:
                raise Locked(f"upload {upload_id} is being written by another request")
            time.sleep(WAIT_STEP_S)

    def finish(self, session_id: str, upload_id: str) -> UploadStatus:
        """Finish an upload whose bytes all arrived but whose commit did not happen (the
        server stopped between the last checkpoint and the commit)."""
        row = self._row(session_id, upload_id)
        if row.state == DONE or row.length is None or row.offset != row.length:
            return _status(row)
        try:
            # No waiting: a live holder is finishing it (it heartbeats throughout).
            row, _clean = self._claim(session_id, upload_id, wait_s=0)
        except Conflict:
            # Finished meanwhile, or a request is finishing it now: tell what is recorded
            # (offset = length, no artifact yet: the client asks again).
            return self.status(session_id, upload_id)
        try:
            if row.length is not None and row.offset == row.length:
                self.complete(row, None)
                return self.status(session_id, upload_id)
        finally:
            self._ctx.catalog.release_upload(upload_id, self.writer_id, row.generation)
        return _status(row)

    def complete(self, row: UploadRow, hasher: Any | None) -> Artifact:
        """Commit a claimed upload whose recorded offset is its length.

        The claim is kept alive (heartbeats) while the body is gathered and hashed, so no
        other request takes the upload over meanwhile; everything this attempt records is
        conditional on the claim, and a failed attempt removes only what it owns. While the
        upload stays open its bytes stay too (on S3 the completed object is their only
        copy): the next attempt (the client's retry, a HEAD) finds them and commits.
        """
        ctx = self._ctx
        assert row.length is not None
        assert row.offset == row.length
        now = ctx.clock.now()
        values = check_metadata(ctx, row.meta, now)
        # The artifact takes the upload's ID: its bytes can be built at their key already.
        artifact_id = row.id
        key = artifact_key(row.session_id, artifact_id)
        pending = {"id": artifact_id, "session_id": row.session_id, "created_at": now, **values}
        begun = ctx.catalog.begin_completion(row.id, self.writer_id, row.generation, pending)
        if begun is None:
            raise Locked(f"upload {row.id} was taken over by another request")
        if not begun:
            raise session_not_found(row.session_id)
        try:
            with _Heartbeat(self, row):
                artifact = self._commit(row, hasher, artifact_id, values)
        except BaseException:
            self._abandon(row, key)
            raise
        self.hashes.drop(row.id)
        with contextlib.suppress(StorageError):  # orphan reconciliation removes what is left
            self.blobs.discard_upload(row.id, row.pieces)
        return artifact

    def _commit(
        self, row: UploadRow, hasher: Any | None, artifact_id: str, values: dict[str, Any]
    ) -> Artifact:
        ctx = self._ctx
        assert row.length is not None
        assembled = self.blobs.assemble(
            row.id, row.pieces, row.length, artifact_key(row.session_id, artifact_id)
        )
        try:
            digest = hasher.hexdigest() if hasher is not None else assembled.sha256()
            expected = row.meta.get("sha256")
            if expected and check_sha256(expected) != digest:
                # No retry can mend a whole body: the upload goes, so nothing is left behind.
                self.terminate(row.session_id, row.id)
                raise UploadChecksumMismatch(
                    f"sha256 mismatch: metadata says {expected.lower()}, received {digest}; "
                    "the upload was removed"
                )
            final = {**values, "size": row.length, "sha256": digest, "ready_at": ctx.clock.now()}
            # The bytes are put at their key inside the transaction that holds the session
            # row (S3 completes there, unless it had to be hashed again just before): a
            # close either comes first (nothing is put in place; a completed S3 object is
            # removed by ``_abandon`` as the upload is gone) or after (it sees the artifact).
            artifact = ctx.catalog.finalize_upload(
                row.id,
                self.writer_id,
                row.generation,
                artifact_id,
                row.session_id,
                final,
                ctx.settings.session_quota_bytes,
                assembled.commit,
            )
            if artifact is None:
                raise Locked(f"upload {row.id} was taken over by another request")
            return artifact
        finally:
            assembled.abort()

    def _abandon(self, row: UploadRow, key: str) -> None:
        """After a failed attempt: its pending record goes if its claim still holds; the
        bytes at the key go only once the upload is gone (closed, terminated, expired)."""
        ctx = self._ctx
        try:
            state = ctx.catalog.abandon_completion(row.id, self.writer_id, row.generation, row.id)
            if state is None and ctx.catalog.get_artifact(row.session_id, row.id) is None:
                ctx.blobs.delete(key)
        except EphemeraError:
            pass  # orphan reconciliation removes what is left once the upload is gone


class _Heartbeat:
    """Keeps a claim alive from a thread while one long step runs (gathering, hashing)."""

    def __init__(self, owner: Resumables, row: UploadRow) -> None:
        self._owner = owner
        self._row = row
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ephemera-tus-beat", daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        ctx = self._owner._ctx
        row = self._row
        every = self._owner.beat_s
        while not self._stop.wait(every):
            try:
                if not ctx.catalog.heartbeat_upload(
                    row.id, self._owner.writer_id, row.generation, ctx.clock.now()
                ):
                    return  # lost (or committed): the commit finds out by itself
            except EphemeraError:
                pass  # a busy database: the next beat tries again


def check_length(
    ctx: Context, session_id: str, length: int, upload_id: str | None = None, what: str = ""
) -> None:
    """Refuse a length over the upload limit, or over the session's quota counting what its
    other open uploads declared (their bytes are staged already, or about to be)."""
    what = what or f"Upload-Length {length}"
    limit = ctx.settings.max_upload_bytes
    if length > limit:
        raise TooLarge(f"{what} exceeds the upload limit of {limit} bytes")
    quota = ctx.settings.session_quota_bytes
    if quota is not None:
        _count, used = ctx.catalog.session_usage_all(session_id)
        used += ctx.catalog.open_upload_bytes(session_id, ctx.clock.now(), upload_id)
        if used + length > quota:
            raise TooLarge(
                f"{what} exceeds the session's quota of {quota} bytes "
                f"({used} stored or declared by its other uploads)"
            )


def _check_bounds(
    ctx: Context, row: UploadRow, offset: int, length: int | None, body_size: int | None
) -> None:
    if length is not None and row.length is not None and length != row.length:
        raise InvalidInput(f"Upload-Length is fixed at {row.length}")
    if length is not None and length < row.offset:
        raise InvalidInput(f"Upload-Length {length} is below the upload's offset {row.offset}")
    total = row.length if row.length is not None else length
    limit = total if total is not None else ctx.settings.max_upload_bytes
    if body_size is not None and offset + body_size > limit:
        raise TooLarge(f"{offset + body_size} bytes exceed the upload's length of {limit}")


class Appender:
    """One request's bytes for one claimed upload. Thread-confined, like ``Upload``."""

    def __init__(
        self,
        owner: Resumables,
        row: UploadRow,
        clean: bool,
        length: int | None,
        checksum: tuple[str, bytes] | None,
    ) -> None:
        self._owner = owner
        self._ctx = owner._ctx
        self._row = row
        self._length = row.length if row.length is not None else length
        self._new_length = length if row.length is None else None
        self._checksum = checksum
        self._check = CHECKSUMS[checksum[0]]() if checksum is not None else None
        self._hasher = owner.hashes.take(row.id, row.offset)
        if self._hasher is None and row.offset == 0:
            self._hasher = hashlib.sha256()
        self._recorded = row.offset
        self._beat = time.monotonic()
        self._released = False
        self._writer: PieceWriter = owner.blobs.append_to(
            row.id,
            artifact_key(row.session_id, row.id),
            row.pieces,
            row.offset,
            clean,
            self._reserve,
        )

    @property
    def offset(self) -> int:
        return self._recorded

    @property
    def hand_over_s(self) -> float:
        """The longest a caller may hold received bytes before ``write``: half a beat, so
        the gap between two beats of a slow sender stays under a claim timeout's 3/4."""
        return self._owner.beat_s / 2

    def _reserve(self) -> int:
        n = self._ctx.catalog.reserve_piece(
            self._row.id, self._owner.writer_id, self._row.generation
        )
        if n is None:
            raise Locked(f"upload {self._row.id} was taken over by another request")
        return n

    def write(self, chunks: list[bytes]) -> None:
        limit = self._length if self._length is not None else self._ctx.settings.max_upload_bytes
        for data in chunks:
            if self._writer.written + len(data) > limit:
                raise TooLarge(f"the body runs past the upload's length of {limit} bytes")
            self._writer.write(data)
            if self._hasher is not None:
                self._hasher.update(data)
            if self._check is not None:
                self._check.update(data)
            elif self._writer.checkpoint_due():
                self._record(final=False)
        if time.monotonic() - self._beat >= self._owner.beat_s:
            self._heartbeat()

    def _heartbeat(self) -> None:
        row = self._row
        now = self._ctx.clock.now()
        if not self._ctx.catalog.heartbeat_upload(
            row.id, self._owner.writer_id, row.generation, now
        ):
            raise Locked(f"upload {row.id} was taken over by another request")
        self._beat = time.monotonic()

    def _record(self, final: bool) -> None:
        row = self._row
        offset, pieces = self._writer.checkpoint(final)
        ok = self._ctx.catalog.record_upload_progress(
            row.id,
            self._owner.writer_id,
            row.generation,
            offset,
            pieces,
            self._ctx.clock.now(),
            self._new_length,
        )
        if not ok:
            raise Locked(f"upload {row.id} was taken over by another request")
        self._new_length = None
        self._recorded = offset
        self._row = replace(row, offset=offset, pieces=pieces, length=self._length)
        self._beat = time.monotonic()
        if self._hasher is not None and offset == self._writer.written:
            self._owner.hashes.keep(row.id, offset, self._hasher)

    def finish(self) -> UploadStatus:
        """The request's body ended: check its checksum, record it, commit a complete upload."""
        try:
            if self._check is not None:
                assert self._checksum is not None
                if self._check.digest() != self._checksum[1]:
                    raise UploadChecksumMismatch(
                        f"Upload-Checksum ({self._checksum[0]}) does not match the body: "
                        "nothing was appended"
                    )
            self._record(final=True)
            row = self._row
            if row.length is not None and row.offset == row.length:
                self._writer.close()
                artifact = self._owner.complete(row, self._hasher)
                self._released = True  # the commit ended the claim
                return _status(replace(row, artifact_id=artifact.id, state=DONE))
            return _status(row)
        finally:
            self.close()

    def interrupt(self) -> None:
        """The body stopped early (client gone): keep what arrived, unless a checksum
        covers the whole body."""
        try:
            if self._check is None:
                self._record(final=True)
        except EphemeraError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._writer.close()
        if not self._released:
            self._released = True
            row = self._row
            self._ctx.catalog.release_upload(row.id, self._owner.writer_id, row.generation)
