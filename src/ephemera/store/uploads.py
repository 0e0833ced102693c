"""Uploads: an artifact's metadata checked up front, its bytes streamed, then committed.

Upload (guarantee 3, "no dangling record")::

    (none) --insert--> pending --bytes staged, fsynced--> [commit: in one write transaction
    holding the session row: rename bytes into place, then mark ready] --> ready

    A crash before the commit transaction leaves a pending record (invisible; removed by
    orphan reconciliation after the grace period) and staged bytes (likewise). A crash inside
    it leaves committed bytes with a pending record: still invisible, still reconciled.

A body already at hand (``put`` with bytes: small HTTP bodies, JSON uploads) skips the
pending record: staged and fsynced, then inserted ``ready`` in one write transaction that
renames the bytes into place first (``put_whole``). Both commits are shared with concurrent
uploads (``catalog.groupcommit``, where the order is argued).
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from ephemera import ids
from ephemera.blobs import BlobStat, BlobWriter, artifact_key
from ephemera.catalog import Completion
from ephemera.config import Settings
from ephemera.context import Context
from ephemera.errors import ChecksumMismatch, InvalidInput, StorageError, TooLarge
from ephemera.models import MAX_TIMEOUT_S, Artifact, ImportEntry, ImportOrigin, StorageClass
from ephemera.store.idempotency import UploadKey, check_replay, upload_body_hash
from ephemera.store.sessions import session_not_found

CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")

# What a commit returns: the artifact, or the artifact with its import entry.
Committed = TypeVar("Committed")


def check_content_type(value: str) -> str:
    base = value.split(";", 1)[0].strip().lower()
    if len(value) > 255 or not CONTENT_TYPE_RE.fullmatch(base):
        raise InvalidInput(f"invalid content type {value[:80]!r}")
    return base


def check_sha256(value: str) -> str:
    value = value.strip().lower()
    if not SHA256_RE.fullmatch(value):
        raise InvalidInput("sha256 must be 64 hexadecimal characters")
    return value


def artifact_values(
    settings: Settings,
    name: str,
    kind: str,
    content_type: str | None,
    storage: StorageClass | str | None,
    expires_in_s: int | None,
    now: datetime,
) -> dict[str, Any]:
    """An artifact's checked metadata, as stored: name, kind, type, storage class, expiry."""
    ids.check_file_name(name)
    ids.check_kind(kind)
    if not content_type:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    content_type = check_content_type(content_type)
    try:
        storage_class = StorageClass(storage) if storage else None
    except ValueError:
        raise InvalidInput("storage must be 'persistent' or 'temporary'") from None
    if expires_in_s is not None:
        if not (1 <= expires_in_s <= MAX_TIMEOUT_S):
            raise InvalidInput(f"expires_in_s must be between 1 and {MAX_TIMEOUT_S}")
        if storage_class is StorageClass.PERSISTENT:
            raise InvalidInput("expires_in_s applies to temporary artifacts only")
        storage_class = StorageClass.TEMPORARY
    storage_class = storage_class or StorageClass.PERSISTENT
    expires_at = None
    if storage_class is StorageClass.TEMPORARY:
        expires_at = now + timedelta(seconds=expires_in_s or settings.temporary_ttl_s)
    return {
        "name": name,
        "kind": kind,
        "content_type": content_type,
        "storage_class": storage_class,
        "expires_at": expires_at,
    }


def chunks(data: bytes | BinaryIO | Iterable[bytes], size: int) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
    elif hasattr(data, "read"):
        while chunk := data.read(size):
            yield chunk
    else:
        yield from data


class Upload:
    """One artifact being written: ``write`` chunks, then ``commit`` (or ``abort``).

    Thread-confined: one thread writes at a time (the HTTP layer hands chunks to a worker
    thread in order). Used as a context manager it aborts on any exception.
    """

    def __init__(
        self,
        ctx: Context,
        session_id: str,
        artifact_id: str,
        writer: BlobWriter,
        values: dict[str, Any],
        started_at: datetime,
        claim: tuple[str, str] | None = None,
        key: UploadKey | None = None,
        expires_in_s: int | None = None,
    ) -> None:
        self._ctx = ctx
        # An Idempotency-Key: completed with the artifact, or a recorded answer to repeat.
        self._key = key
        self._expires_in_s = expires_in_s
        self._body_hash: str | None = None
        # A task output commits only while this (task ID, claim ID) holds.
        self._claim = claim
        self.session_id = session_id
        self.artifact_id = artifact_id
        self._writer = writer
        self._values = values
        self._started_at = started_at
        self._finished = False

    def amend(
        self,
        *,
        name: str,
        kind: str = "input",
        content_type: str | None = None,
        storage: StorageClass | str | None = None,
        expires_in_s: int | None = None,
    ) -> None:
        """Replace the artifact's metadata before commit (for metadata that trails the bytes)."""
        try:
            producer = self._values.get("producer")
            self._values = artifact_values(
                self._ctx.settings,
                name,
                kind,
                content_type,
                storage,
                expires_in_s,
                self._started_at,
            )
            if producer is not None:
                self._values["producer"] = producer
            self._expires_in_s = expires_in_s
        except BaseException:
            self.abort()
            raise

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes) -> None:
        limit = self._ctx.settings.max_upload_bytes
        if self._writer.size + len(data) > limit:
            self.abort()
            raise TooLarge(f"artifact exceeds the upload limit of {limit} bytes")
        self._writer.write(data)

    def commit(self, expected_sha256: str | None = None) -> Artifact:
        """Make the artifact ready."""
        ctx = self._ctx
        return self._finish(
            expected_sha256,
            lambda values: ctx.catalog.finalize_artifact(
                self.artifact_id,
                self.session_id,
                values,
                ctx.settings.session_quota_bytes,
                self._writer.commit,
                self._claim,
                self._completion(),
            ),
        )

    def _completion(self) -> Completion[Artifact] | None:
        if self._key is None or self._key.completion is None:
            return None
        return replace(self._key.completion, body_hash=self._body_hash)

    def commit_import(
        self, origin: ImportOrigin, expected_sha256: str | None = None
    ) -> tuple[Artifact, ImportEntry]:
        """Make the artifact ready and record its import in the same transaction (Conflict,
        and nothing kept, when the session's ledger holds that origin already)."""
        ctx = self._ctx
        return self._finish(
            expected_sha256,
            lambda values: ctx.catalog.finalize_import(
                self.artifact_id,
                self.session_id,
                values,
                ctx.settings.session_quota_bytes,
                self._writer.commit,
                origin,
            ),
        )

    def _finish(
        self, expected_sha256: str | None, finalize: Callable[[dict[str, Any]], Committed]
    ) -> Committed:
        """Check the digest, sync the bytes, then ``finalize`` with the final values; on any
        failure nothing is kept."""
        if self._finished:
            raise InvalidInput("upload already finished")
        digest = self._writer.sha256()
        if expected_sha256 is not None and check_sha256(expected_sha256) != digest:
            self.abort()
            raise ChecksumMismatch(
                f"sha256 mismatch: client sent {expected_sha256.lower()}, received {digest}"
            )
        if self._key is not None:
            self._body_hash = upload_body_hash(self._asked(), digest)
            if self._key.recorded is not None:
                # A retry of an answered upload: its body was only read to compare it.
                self.abort()
                raise check_replay(self._key.recorded, self._body_hash)
        self._finished = True
        ctx = self._ctx
        try:
            # The slow part of durability happens here, outside the commit transaction.
            self._writer.sync()
        except BaseException:
            discard(ctx, self.session_id, self.artifact_id, self._writer)
            raise
        values = {
            **self._values,
            "size": self._writer.size,
            "sha256": digest,
            "ready_at": ctx.clock.now(),
        }
        try:
            return finalize(values)
        except BaseException:
            discard(ctx, self.session_id, self.artifact_id, self._writer)
            raise

    def _asked(self) -> dict[str, Any]:
        """The metadata as asked for (an expiry as its length, not as the instant it gives)."""
        asked = {k: v for k, v in self._values.items() if k != "expires_at"}
        return {**asked, "expires_in_s": self._expires_in_s}

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            if self._key is not None and self._key.recorded is not None:
                self._writer.abort()  # only hashed: nothing was recorded or stored
            else:
                discard(self._ctx, self.session_id, self.artifact_id, self._writer)

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


class Digest:
    """A writer that keeps nothing: the size and sha256 of the bytes that went through it."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._size += len(data)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sync(self) -> None:
        pass

    def commit(self) -> BlobStat:
        raise StorageError("bytes that were only hashed cannot be committed")

    def abort(self) -> None:
        pass


def begin_upload(
    ctx: Context,
    session_id: str,
    *,
    name: str,
    kind: str,
    content_type: str | None,
    storage: StorageClass | str | None,
    expires_in_s: int | None,
    declared_size: int | None,
    producer: str | None,
    key: UploadKey | None = None,
) -> Upload:
    """Start an artifact: validates everything up front, so a bad request stores nothing."""
    now = ctx.clock.now()
    values = artifact_values(ctx.settings, name, kind, content_type, storage, expires_in_s, now)
    if producer is not None:
        values["producer"] = ids.check_producer(producer)
    return begin(ctx, session_id, values, now, declared_size, key=key, expires_in_s=expires_in_s)


def begin(
    ctx: Context,
    session_id: str,
    values: dict[str, Any],
    now: datetime,
    declared_size: int | None,
    claim: tuple[str, str] | None = None,
    *,
    key: UploadKey | None = None,
    expires_in_s: int | None = None,
) -> Upload:
    """Record a pending artifact of checked ``values`` and open its writer; with ``claim``
    (task ID, claim ID) it is a task output, committed only while that claim holds."""
    if declared_size is not None and declared_size > ctx.settings.max_upload_bytes:
        raise TooLarge(
            f"artifact exceeds the upload limit of {ctx.settings.max_upload_bytes} bytes"
        )
    artifact_id = ids.new_uuid7()
    if key is not None and key.recorded is not None:
        # A retry of an answered upload: its body is read only to hash it and compare it with
        # the first one's, so it takes no room, no record and no blob.
        return Upload(ctx, session_id, artifact_id, Digest(), values, now, claim, key, expires_in_s)
    ctx.volume.check_room()
    if not ctx.catalog.insert_pending_artifact(
        {"id": artifact_id, "session_id": session_id, "created_at": now, **values}
    ):
        raise session_not_found(session_id)
    try:
        writer = ctx.blobs.writer(artifact_key(session_id, artifact_id))
    except BaseException:
        ctx.catalog.delete_pending_artifact(artifact_id)
        raise
    return Upload(ctx, session_id, artifact_id, writer, values, now, claim, key, expires_in_s)


def put(
    ctx: Context,
    session_id: str,
    data: bytes | BinaryIO | Iterable[bytes],
    *,
    name: str,
    kind: str,
    content_type: str | None,
    storage: StorageClass | str | None,
    expires_in_s: int | None,
    sha256: str | None,
    producer: str | None,
    chunk_size: int,
    key: UploadKey | None = None,
) -> Artifact:
    """Store an artifact from bytes, a binary file, or an iterable of chunks (streamed)."""
    if sha256 is not None:
        check_sha256(sha256)
    if isinstance(data, bytes) and key is None:
        now = ctx.clock.now()
        values = artifact_values(ctx.settings, name, kind, content_type, storage, expires_in_s, now)
        if producer is not None:
            values["producer"] = ids.check_producer(producer)
        return put_whole(ctx, session_id, data, values, now, sha256)
    upload = begin_upload(
        ctx,
        session_id,
        name=name,
        kind=kind,
        content_type=content_type,
        storage=storage,
        expires_in_s=expires_in_s,
        declared_size=len(data) if isinstance(data, bytes) else None,
        producer=producer,
        key=key,
    )
    with upload:
        for chunk in chunks(data, chunk_size):
            upload.write(chunk)
        return upload.commit(sha256)


def put_whole(
    ctx: Context,
    session_id: str,
    data: bytes,
    values: dict[str, Any],
    now: datetime,
    expected_sha256: str | None,
) -> Artifact:
    """An artifact whose bytes are all at hand: staged and synced, then recorded ready in
    one (shared) write transaction, with no pending record first. Nothing streams, so
    there is nothing in flight for a pending record to stand for: a crash leaves at most a
    staging file, which orphan reconciliation removes."""
    limit = ctx.settings.max_upload_bytes
    if len(data) > limit:
        raise TooLarge(f"artifact exceeds the upload limit of {limit} bytes")
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and check_sha256(expected_sha256) != digest:
        raise ChecksumMismatch(
            f"sha256 mismatch: client sent {expected_sha256.lower()}, received {digest}"
        )
    ctx.volume.check_room()
    artifact_id = ids.new_uuid7()
    key = artifact_key(session_id, artifact_id)
    writer = ctx.blobs.writer(key)
    try:
        writer.write(data)
        # The slow part of durability happens here, outside the commit transaction.
        writer.sync()
        row = {
            "id": artifact_id,
            "session_id": session_id,
            "created_at": now,
            **values,
            "size": len(data),
            "sha256": digest,
            "ready_at": ctx.clock.now(),
        }
        return ctx.catalog.insert_ready_artifact(
            row, ctx.settings.session_quota_bytes, writer.commit
        )
    except BaseException:
        writer.abort()
        with contextlib.suppress(StorageError):  # left over: orphan reconciliation
            if ctx.catalog.get_artifact(session_id, artifact_id) is None:
                ctx.blobs.delete(key)
        raise


def discard(ctx: Context, session_id: str, artifact_id: str, writer: BlobWriter) -> None:
    # Best effort: whatever is left is found by orphan reconciliation.
    writer.abort()
    try:
        ctx.catalog.delete_pending_artifact(artifact_id)
        if ctx.catalog.get_artifact(session_id, artifact_id) is None:
            ctx.blobs.delete(artifact_key(session_id, artifact_id))
    except StorageError:
        pass
