"""Blobs in memory: the blob store contract without I/O, for fast tests (``memory://``).

Re-exported by :mod:`ephemera.testing`; production code opens it only through
``open_blob_store("memory://")``.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

from ephemera.blobs import BlobStat, StagedBlob, check_key
from ephemera.blobs.resumable import Pieces
from ephemera.errors import BlobNotFound, StorageError

MEMORY_CHECKPOINT = 8 * 1024 * 1024


class _MemoryWriter:
    def __init__(self, store: MemoryBlobStore, key: str, name: str) -> None:
        self._store = store
        self._key = key
        self._name = name
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._done = False

    @property
    def size(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError("write after commit or abort")
        self._hash.update(data)
        self._buffer += data
        self._store._staged[self._name] = len(self._buffer)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sync(self) -> None:
        if self._done:
            raise StorageError("sync after commit or abort")

    def commit(self) -> BlobStat:
        if self._done:
            raise StorageError("commit after commit or abort")
        self._done = True
        with self._store._lock:
            self._store._staged.pop(self._name, None)
            self._store._blobs[self._key] = (bytes(self._buffer), self._store._now())
        return self._store.stat(self._key)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._store._staged.pop(self._name, None)


class _MemoryPieceWriter:
    """Segments as the local store keeps them (one per writer, continued after a clean
    release, truncated to the recorded length), in a dict."""

    def __init__(
        self,
        store: MemoryBlobStore,
        upload_id: str,
        pieces: Pieces,
        offset: int,
        continue_last: bool,
        reserve: Callable[[], int],
    ) -> None:
        self._store = store
        self._upload_id = upload_id
        self._segments = [[int(n), int(size)] for n, size in pieces.get("segments", [])]
        if continue_last and self._segments:
            number, size = self._segments[-1]
            segment = store._segments.get((upload_id, number))
            if segment is None:
                raise StorageError(f"upload {upload_id}: segment {number} is missing")
            del segment[size:]
        else:
            number = reserve()
            self._segments.append([number, 0])
            store._segments[(upload_id, number)] = bytearray()
        self._segment = store._segments[(upload_id, number)]
        self._written = offset
        self._durable = offset

    @property
    def written(self) -> int:
        return self._written

    def write(self, data: bytes) -> None:
        self._segment += data
        self._written += len(data)

    def checkpoint_due(self) -> bool:
        return self._written - self._durable >= MEMORY_CHECKPOINT

    def checkpoint(self, final: bool) -> tuple[int, Pieces]:
        self._segments[-1][1] += self._written - self._durable
        self._durable = self._written
        return self._durable, {"segments": [list(s) for s in self._segments]}

    def close(self) -> None:
        pass


class _MemoryAssembled:
    def __init__(self, store: MemoryBlobStore, key: str, body: bytes) -> None:
        self._store = store
        self._key = key
        self._body = body

    def sha256(self) -> str:
        return hashlib.sha256(self._body).hexdigest()

    def commit(self) -> None:
        with self._store._lock:
            self._store._blobs[self._key] = (self._body, self._store._now())

    def abort(self) -> None:
        pass


class MemoryBlobStore:
    """A BlobStore in a dict: same contract as the real ones, for unit tests."""

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, datetime]] = {}
        self._staged: dict[str, int] = {}
        self._lock = threading.Lock()
        self._counter = 0
        # Resumable uploads' segments: (upload ID, piece number) -> bytes.
        self._segments: dict[tuple[str, int], bytearray] = {}

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)

    def writer(self, key: str) -> _MemoryWriter:
        check_key(key)
        with self._lock:
            self._counter += 1
            name = f"{self._counter}.part"
            self._staged[name] = 0
        return _MemoryWriter(self, key, name)

    def open(self, key: str) -> BinaryIO:
        try:
            return io.BytesIO(self._blobs[check_key(key)][0])
        except KeyError:
            raise BlobNotFound(f"no blob at {key}") from None

    def stat(self, key: str) -> BlobStat:
        try:
            data, modified = self._blobs[check_key(key)]
        except KeyError:
            raise BlobNotFound(f"no blob at {key}") from None
        return BlobStat(key, len(data), modified)

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(check_key(key), None)

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        for key in keys:
            self.delete(key)
        return {}

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._blobs if k.startswith(prefix)]
            for key in doomed:
                del self._blobs[key]
        return len(doomed)

    def list(self, prefix: str = "") -> Iterator[BlobStat]:
        with self._lock:
            keys = sorted(k for k in self._blobs if k.startswith(prefix))
        for key in keys:
            try:
                yield self.stat(key)
            except BlobNotFound:
                continue

    def list_children(self, prefix: str, after: str | None = None) -> Iterator[str]:
        with self._lock:
            names = {k[len(prefix) :].split("/", 1)[0] for k in self._blobs if k.startswith(prefix)}
        yield from sorted(n for n in names if after is None or n > after)

    def list_staged(self) -> Iterator[StagedBlob]:
        with self._lock:
            staged = list(self._staged.items())
            uploads: dict[str, int] = {}
            for (upload_id, _n), segment in self._segments.items():
                uploads[f"tus-{upload_id}"] = uploads.get(f"tus-{upload_id}", 0) + len(segment)
        for name, size in [*staged, *uploads.items()]:
            yield StagedBlob(name, size, self._now())

    def delete_staged(self, name: str) -> None:
        self._staged.pop(name, None)
        upload_id = self.upload_of_staged(name)
        if upload_id is not None:
            self.discard_upload(upload_id, {})

    # -- resumable uploads (ephemera.blobs.resumable) -------------------------------------------

    def append_to(
        self,
        upload_id: str,
        key: str,
        pieces: Pieces,
        offset: int,
        continue_last: bool,
        reserve: Callable[[], int],
    ) -> _MemoryPieceWriter:
        check_key(key)
        return _MemoryPieceWriter(self, upload_id, pieces, offset, continue_last, reserve)

    def assemble(self, upload_id: str, pieces: Pieces, length: int, key: str) -> _MemoryAssembled:
        body = bytearray()
        for number, size in pieces.get("segments", []):
            segment = self._segments.get((upload_id, int(number)))
            if segment is None or len(segment) < int(size):
                raise StorageError(f"upload {upload_id}: segment {number} is short")
            body += segment[: int(size)]
        if len(body) != length:
            raise StorageError(f"upload {upload_id}: recorded segments do not add up")
        return _MemoryAssembled(self, check_key(key), bytes(body))

    def discard_upload(self, upload_id: str, pieces: Pieces) -> None:
        with self._lock:
            for found in [k for k in self._segments if k[0] == upload_id]:
                del self._segments[found]

    def upload_of_staged(self, name: str) -> str | None:
        return name.removeprefix("tus-") if name.startswith("tus-") else None

    def check(self) -> None:
        return None
