"""Writing one blob to S3: a single PutObject for a body of at most one part, else a
multipart upload whose parts go up in parallel (``ephemera.blobs.s3_parts``)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

from ephemera.blobs import BlobStat
from ephemera.blobs.s3_buffer import PartBuffer
from ephemera.blobs.s3_parts import PartUploads
from ephemera.blobs.s3_requests import MAX_PARTS, PART_SIZE, translated
from ephemera.errors import StorageError, TooLarge

# Parts of one upload in flight at once: enough to keep the link busy while some parts wait
# on their round trips, few enough that a writer holds at most 5 parts (40 MiB).
PARALLEL_PARTS = 4

_T = TypeVar("_T")


class S3Store(Protocol):
    """What a writer needs of the S3 store (``ephemera.blobs.s3``)."""

    @property
    def bucket(self) -> str: ...

    @property
    def parallel_parts(self) -> int: ...

    def client(self) -> Any: ...

    def object_key(self, key: str) -> str: ...


def server_time(response: Any) -> datetime:
    # The time of the commit on the server's clock, without one more request to ask it.
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).astimezone(UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


class S3BlobWriter:
    """Streams a body to its key: one PutObject at the commit for a body of at most one part,
    else a multipart upload whose parts go up in the background as they fill.

    Memory: the part being filled, plus up to ``parallel_parts`` parts in flight (held until
    S3 has them), so at most ``(parallel_parts + 1) * PART_SIZE`` bytes, 40 MiB with the
    defaults; ``buffered`` counts them. Each part is a mapping of its own, filled again once
    S3 has it and unmapped when the writer commits or aborts (``ephemera.blobs.s3_buffer``).
    """

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key
        self._object = store.object_key(key)
        self._hash = hashlib.sha256()
        self._size = 0
        # The bytes of part ``_part``: never more than one part. A full part is handed over
        # only when one more byte comes, so a body of exactly one part is still one PutObject.
        self._buffer = PartBuffer()
        self._buffer_stored = False  # sync() uploaded the buffer as it is now
        # Parts S3 has, emptied to be filled again: each mapping is touched page by page
        # once, not once per part (a fresh one costs a page fault per 4 KiB).
        self._free: list[PartBuffer] = []
        self._part = 1
        self._upload_id: str | None = None
        self._parts = PartUploads(self._send_part, store.parallel_parts, self._release)
        self._open = True

    @property
    def size(self) -> int:
        return self._size

    @property
    def buffered(self) -> int:
        """Bytes held in memory: the part being filled and the parts in flight."""
        return len(self._buffer) + self._parts.in_flight

    def write(self, data: bytes) -> None:
        if not self._open:
            raise StorageError("write after commit or abort")
        self._hash.update(data)
        self._size += len(data)
        view = memoryview(data)
        while view:
            if self._buffer.full:
                self._next_part()
            view = self._buffer.fill(view)
            self._buffer_stored = False

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sync(self) -> None:
        """Wait for the parts in flight and upload the part being filled, so the commit only
        completes the upload.

        The part stays in memory too: if more bytes follow, it is uploaded again, whole, under
        the same part number (S3 keeps the last upload of a part).

        A body of at most one part has started no upload and stays in memory: the commit
        puts it whole, in one request. So the commit, which may run under a lock, sends the
        body (up to one part) rather than a short completion; the upload costs one request
        instead of three (create, part, complete), and a small body, the common case, takes
        one round trip under the lock either way.
        """
        if not self._open:
            raise StorageError("sync after commit or abort")
        if self._upload_id is None:
            return
        if not self._buffer_stored:
            self._guarded(lambda: self._parts.send(self._numbered(), self._buffer))
            self._buffer_stored = True
        else:
            self._guarded(self._parts.wait)

    def commit(self) -> BlobStat:
        if not self._open:
            raise StorageError("commit after commit or abort")
        client = self._store.client()
        bucket = self._store.bucket
        try:
            with translated(f"cannot commit blob {self._key}"):
                if self._upload_id is None:
                    response = self._put_whole(client)
                else:
                    self.sync()
                    response = client.complete_multipart_upload(
                        Bucket=bucket,
                        Key=self._object,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts.listed()},
                    )
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._drop_buffers()
        return BlobStat(self._key, self._size, server_time(response))

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        # Parts still in flight land first: one landing after the abort would be kept.
        self._drop_buffers()
        if self._upload_id is not None:
            # Best effort: an upload left behind is staged, and orphan reconciliation aborts
            # it; raising here would hide the error that made the caller abort.
            with (
                contextlib.suppress(StorageError),
                translated(f"cannot abort the upload of blob {self._key}"),
            ):
                self._store.client().abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._object, UploadId=self._upload_id
                )

    def _next_part(self) -> None:
        """The full buffer goes up in the background (unless sync() sent it as it is); the
        next part starts in a new buffer."""
        full = self._buffer
        if self._buffer_stored:
            self._release(full)  # S3 has it already (sync sent it as it is)
        else:
            self._guarded(lambda: self._parts.submit(self._numbered(), full))
        self._buffer = self._free.pop() if self._free else PartBuffer()
        self._buffer_stored = False
        self._part += 1

    def _release(self, part: PartBuffer) -> None:
        """A part S3 has (or will never have): kept to be filled again while the writer is
        open, given back to the system after."""
        if self._open:
            part.clear()
            self._free.append(part)
        else:
            part.close()

    def _drop_buffers(self) -> None:
        """Once closed: wait for the parts in flight, then unmap every part."""
        self._parts.close()
        for part in (self._buffer, *self._free):
            part.close()
        self._free.clear()

    def _numbered(self) -> int:
        """The number of the part being filled, with an upload started to take it."""
        if self._part > MAX_PARTS:
            raise TooLarge(f"blob exceeds the S3 limit of {MAX_PARTS * PART_SIZE} bytes")
        if self._upload_id is None:
            with translated(f"cannot upload blob {self._key}"):
                created = self._store.client().create_multipart_upload(
                    Bucket=self._store.bucket, Key=self._object
                )
            self._upload_id = str(created["UploadId"])
        return self._part

    def _guarded(self, step: Callable[[], _T]) -> _T:
        """Run one step of the upload; if it fails, the whole upload is aborted."""
        try:
            return step()
        except BaseException:
            self.abort()
            raise

    def _put_whole(self, client: Any) -> Any:
        """The body, of at most one part, in one PutObject."""
        with self._buffer.body() as body:
            return client.put_object(
                Bucket=self._store.bucket,
                Key=self._object,
                Body=body,
                ContentMD5=self._buffer.md5(),
            )

    def _send_part(self, number: int, part: PartBuffer) -> str:
        # Runs on a part thread: translated there, raised to the writer by PartUploads.
        with (
            translated(f"cannot upload part {number} of blob {self._key}"),
            part.body() as body,
        ):
            uploaded = self._store.client().upload_part(
                Bucket=self._store.bucket,
                Key=self._object,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ContentMD5=part.md5(),
            )
        return str(uploaded["ETag"])
