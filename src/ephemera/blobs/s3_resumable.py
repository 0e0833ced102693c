"""Resumable uploads on S3: one multipart upload at the artifact's key, a small tail object.

Bytes are buffered to a whole part (``PART_SIZE``, above S3's 5 MiB minimum) and uploaded
under a part number the catalog reserved for this writer alone; a checkpoint records the
parts uploaded. At the end of a request the bytes below a part are put as a small tail
object (``uploads/{upload_id}/tail-{n}``, ``n`` reserved too) and recorded; the next writer
reads it back into its buffer. So memory per upload stays under one part, and a writer that
lost its claim can only upload parts and tails nobody records: completion lists exactly the
recorded parts, and S3 ignores the others.

Completing uploads the recorded tail as the last part (under its own reserved number, above
every recorded part's) and completes the multipart upload: the object appears at the
artifact's key whole, with no copy. That happens inside the commit transaction, unless the
body must be hashed again first (another process wrote part of it): then just before.
Staged leftovers are the multipart uploads (aborted by orphan reconciliation once no upload
record claims them) and tail objects, which ``list_staged`` reports by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from botocore.exceptions import ClientError

from ephemera.blobs import BlobStat
from ephemera.blobs.resumable import Pieces
from ephemera.blobs.s3_buffer import BLOCK, PartBuffer
from ephemera.blobs.s3_requests import MAX_PARTS, content_md5, translated
from ephemera.errors import StorageError, TooLarge


class S3BlobStore(Protocol):
    """What resumable uploads need of the S3 store (``ephemera.blobs.s3``)."""

    @property
    def bucket(self) -> str: ...

    def client(self) -> Any: ...

    def object_key(self, key: str) -> str: ...

    def list(self, prefix: str = "") -> Iterator[BlobStat]: ...

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]: ...

    def delete_prefix(self, prefix: str) -> int: ...


UPLOADS = "uploads"
READ_CHUNK = 1024 * 1024


def tail_key(upload_id: str, number: int) -> str:
    return f"{UPLOADS}/{upload_id}/tail-{number}"


class S3PieceWriter:
    def __init__(
        self,
        store: S3BlobStore,
        upload_id: str,
        key: str,
        pieces: Pieces,
        offset: int,
        reserve: Callable[[], int],
    ) -> None:

        self._store = store
        self._upload_id = upload_id
        self._key = key
        self._object = store.object_key(key)
        self._reserve = reserve
        self._mpu: str | None = pieces.get("mpu")
        self._parts: list[list[Any]] = [list(p) for p in pieces.get("parts", [])]
        tail = pieces.get("tail")
        self._tail: list[int] | None = [int(tail[0]), int(tail[1])] if tail else None
        self._written = offset
        self._uploaded = False
        # The bytes not yet in a part: always less than one, as a full part goes up at once.
        self._buffer = PartBuffer()
        if self._tail is not None:
            with translated(f"cannot read the tail of upload {upload_id}"):
                body = store.client().get_object(
                    Bucket=store.bucket, Key=store.object_key(tail_key(upload_id, self._tail[0]))
                )["Body"]
                over = sum(len(self._buffer.fill(memoryview(c))) for c in body.iter_chunks(BLOCK))
            if over or len(self._buffer) != self._tail[1]:
                self._buffer.close()
                raise StorageError(f"upload {upload_id}: its tail is not the recorded size")
        self._drop_unrecorded_tails()

    def _drop_unrecorded_tails(self) -> None:
        """Only the recorded tail counts: others are from requests whose record failed."""
        keep = tail_key(self._upload_id, self._tail[0]) if self._tail else None
        stale = [s.key for s in self._store.list(f"{UPLOADS}/{self._upload_id}/") if s.key != keep]
        if stale:
            self._store.delete_many(stale)

    @property
    def written(self) -> int:
        return self._written

    def write(self, data: bytes) -> None:

        self._written += len(data)
        view = memoryview(data)
        while view:
            view = self._buffer.fill(view)
            if self._buffer.full:
                self._upload_part()
                self._buffer.clear()
                # A recorded tail is always the buffer's start: that part holds its bytes now.
                self._tail = None

    def _upload_part(self) -> None:

        client = self._store.client()
        bucket = self._store.bucket
        number = self._reserve()
        if number > MAX_PARTS:
            raise TooLarge(f"upload {self._upload_id} has used all {MAX_PARTS} S3 part numbers")
        with translated(f"cannot upload a part of upload {self._upload_id}"):
            if self._mpu is None:
                created = client.create_multipart_upload(Bucket=bucket, Key=self._object)
                self._mpu = str(created["UploadId"])
            with self._buffer.body() as body:
                uploaded = client.upload_part(
                    Bucket=bucket,
                    Key=self._object,
                    UploadId=self._mpu,
                    PartNumber=number,
                    Body=body,
                    ContentMD5=self._buffer.md5(),
                )
        self._parts.append([number, len(self._buffer), str(uploaded["ETag"])])
        self._uploaded = True

    def checkpoint_due(self) -> bool:
        return self._uploaded

    def checkpoint(self, final: bool) -> tuple[int, Pieces]:

        if final and self._buffer and (self._tail is None or self._tail[1] != len(self._buffer)):
            number = self._reserve()
            if number > MAX_PARTS:  # the tail becomes the last part: it needs a part number
                raise TooLarge(f"upload {self._upload_id} has used all {MAX_PARTS} part numbers")
            with (
                translated(f"cannot store the tail of upload {self._upload_id}"),
                self._buffer.body() as body,
            ):
                self._store.client().put_object(
                    Bucket=self._store.bucket,
                    Key=self._store.object_key(tail_key(self._upload_id, number)),
                    Body=body,
                    ContentMD5=self._buffer.md5(),
                )
            self._tail = [number, len(self._buffer)]
        self._uploaded = False
        durable = sum(int(p[1]) for p in self._parts) + (self._tail[1] if self._tail else 0)
        return durable, {
            "key": self._key,
            "mpu": self._mpu,
            "parts": self._parts,
            "tail": self._tail,
        }

    def close(self) -> None:
        self._buffer.close()


class S3Assembled:
    """The recorded parts and tail, completed at the key on ``commit`` (or when hashed).

    The multipart upload can only be completed at its key, and only once: completed, the
    object there is the only copy of the bytes, so nothing here removes it (the caller does,
    once the upload is gone). A retry finds it completed and checks its length.
    """

    def __init__(
        self, store: S3BlobStore, upload_id: str, pieces: Pieces, length: int, key: str
    ) -> None:
        self._store = store
        self._upload_id = upload_id
        self._pieces = pieces
        self._length = length
        self._target = store.object_key(key)
        self._placed = False

    def sha256(self) -> str:
        self._place()
        hasher = hashlib.sha256()
        with translated(f"cannot read upload {self._upload_id} back"):
            body = self._store.client().get_object(Bucket=self._store.bucket, Key=self._target)
            for data in body["Body"].iter_chunks(READ_CHUNK):
                hasher.update(data)
        return hasher.hexdigest()

    def commit(self) -> None:
        self._place()

    def abort(self) -> None:
        pass

    def _place(self) -> None:
        if self._placed:
            return
        with translated(f"cannot complete upload {self._upload_id}"):
            self._complete()
        self._placed = True

    def _complete(self) -> None:
        store, client, bucket = self._store, self._store.client(), self._store.bucket
        parts = [list(p) for p in self._pieces.get("parts", [])]
        tail = self._pieces.get("tail")
        tail_body = b""
        if tail:
            tail_body = client.get_object(
                Bucket=bucket, Key=store.object_key(tail_key(self._upload_id, int(tail[0])))
            )["Body"].read()
        mpu = self._pieces.get("mpu")
        if mpu is None:
            client.put_object(
                Bucket=bucket, Key=self._target, Body=tail_body, ContentMD5=content_md5(tail_body)
            )
            return
        try:
            if tail:
                uploaded = client.upload_part(
                    Bucket=bucket,
                    Key=self._target,
                    UploadId=mpu,
                    PartNumber=int(tail[0]),
                    Body=tail_body,
                    ContentMD5=content_md5(tail_body),
                )
                parts.append([int(tail[0]), len(tail_body), str(uploaded["ETag"])])
            listed = [{"PartNumber": int(n), "ETag": etag} for n, _size, etag in sorted(parts)]
            client.complete_multipart_upload(
                Bucket=bucket, Key=self._target, UploadId=mpu, MultipartUpload={"Parts": listed}
            )
        except ClientError:
            # Completed already by an attempt whose commit failed (S3 answers NoSuchUpload,
            # some servers another error): the object is there, whole. Only a completion
            # writes this key, all at once, from the final recorded pieces.
            if not self._completed_already(client):
                raise

    def _completed_already(self, client: Any) -> bool:
        try:
            found = client.head_object(Bucket=self._store.bucket, Key=self._target)
        except ClientError:
            return False
        return int(found["ContentLength"]) == self._length


def assemble(
    store: S3BlobStore, upload_id: str, pieces: Pieces, length: int, key: str
) -> S3Assembled:
    parts = pieces.get("parts", [])
    tail = pieces.get("tail")
    if sum(int(p[1]) for p in parts) + (int(tail[1]) if tail else 0) != length:
        raise StorageError(f"upload {upload_id}: recorded pieces do not add up to its length")
    if len(parts) + (1 if tail else 0) > MAX_PARTS or (tail and int(tail[0]) > MAX_PARTS):
        raise TooLarge(f"upload {upload_id} has used all {MAX_PARTS} S3 part numbers")
    return S3Assembled(store, upload_id, pieces, length, key)


def discard(store: S3BlobStore, upload_id: str, pieces: Pieces) -> None:

    mpu = pieces.get("mpu")
    key = pieces.get("key")
    if mpu is not None and key is not None:
        with translated(f"cannot abort upload {upload_id}", done="NoSuchUpload"):
            store.client().abort_multipart_upload(
                Bucket=store.bucket, Key=store.object_key(key), UploadId=mpu
            )
    store.delete_prefix(f"{UPLOADS}/{upload_id}/")
