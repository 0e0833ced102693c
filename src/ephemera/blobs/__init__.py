"""Blob stores: where artifact bytes live.

The contract every backend keeps (and ``tests/integration/test_blobs.py`` checks for each):

- Keys are ``/``-separated segments of ``[A-Za-z0-9_-]``; they derive from IDs only.
- ``writer(key)`` stages bytes out of sight, counting and hashing them as they stream.
  Nothing is visible at ``key`` until ``commit()`` returns; after it returns the bytes are
  durable. ``sync()`` makes the staged bytes durable ahead of the commit, so that callers
  can keep the commit itself (which may run under a lock) short; ``commit()`` syncs anyway.
  ``abort()`` discards the staged bytes; it is idempotent and safe after a commit (it then
  does nothing). A crash before ``commit()`` leaves at most staged bytes, which
  ``list_staged`` reports so orphan reconciliation can remove them. Bytes written since the
  last ``sync()`` may still be in the writer's memory (S3 keeps a few parts there), out of
  ``list_staged``'s sight; so may a whole body on S3 that fits in one part, which its commit
  puts in one request (a body that small has nothing to sync ahead of the commit).
- ``open`` raises :class:`~ephemera.errors.BlobNotFound` for a missing key.
- ``delete``, ``delete_many`` and ``delete_prefix`` treat "already gone" as success;
  ``delete_many`` returns the keys it could not delete, with the reason.
- ``list`` yields keys under a prefix in ascending key order; ``list_children`` yields the
  names of the next level under a prefix (``sessions/`` -> session IDs), ascending, only
  those greater than ``after`` when it is given.
- Every other failure is a :class:`~ephemera.errors.StorageError`; no ``OSError`` or client
  library error escapes a backend.

Optional capabilities are separate Protocols, checked once when the store is opened.

``open_blob_store`` picks the backend by URL (``EPHEMERA_BLOB_URL``): ``file:///path``
(:mod:`ephemera.blobs.local`), ``s3://bucket/prefix?endpoint=URL&region=NAME``
(:mod:`ephemera.blobs.s3`, which needs the ``s3`` extra), or ``memory://`` for tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlsplit

from ephemera.errors import InvalidInput
from ephemera.extras import require

KEY_RE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


def check_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise InvalidInput(f"invalid blob key {key!r}")
    return key


def session_prefix(session_id: str) -> str:
    return f"sessions/{session_id}/"


def artifact_key(session_id: str, artifact_id: str) -> str:
    return f"sessions/{session_id}/{artifact_id}"


@dataclass(frozen=True, slots=True)
class BlobStat:
    key: str
    size: int
    modified_at: datetime


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """Bytes left in staging by an upload that never committed or aborted."""

    name: str
    size: int
    modified_at: datetime


class BlobWriter(Protocol):
    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def sha256(self) -> str:
        """Hex digest of everything written so far."""
        ...

    def sync(self) -> None: ...

    def commit(self) -> BlobStat: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def writer(self, key: str) -> BlobWriter: ...

    def open(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> BlobStat: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]: ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under ``prefix`` in one sweep; return how many were removed."""
        ...

    def list(self, prefix: str = "") -> Iterator[BlobStat]: ...

    def list_children(self, prefix: str, after: str | None = None) -> Iterator[str]: ...

    def list_staged(self) -> Iterator[StagedBlob]: ...

    def delete_staged(self, name: str) -> None: ...

    def check(self) -> None:
        """Raise StorageError unless the store is reachable and writable."""
        ...


@runtime_checkable
class LocalPaths(Protocol):
    """Capability: blobs are plain files, so they can be served zero-copy."""

    def local_path(self, key: str) -> Path: ...


@runtime_checkable
class RangedReads(Protocol):
    """Capability: read bytes ``start`` to ``end`` inclusive without reading the rest."""

    def open_range(self, key: str, start: int, end: int) -> BinaryIO: ...


@runtime_checkable
class PresignedReads(Protocol):
    """Capability: a URL that reads one blob without credentials until it expires."""

    def presigned_get(
        self,
        key: str,
        expires_in_s: int,
        *,
        content_type: str,
        content_disposition: str,
        endpoint_url: str | None = None,
    ) -> str:
        """A GET URL of ``key`` valid for ``expires_in_s``, answered with these headers.

        ``endpoint_url``: the store's address as the URL's users reach it (default: the
        store's own). Signing needs no request to the store."""
        ...


@runtime_checkable
class CreatesContainer(Protocol):
    """Capability: the store lives in a container (a bucket) that can be created."""

    def create_container(self) -> None:
        """Create it if missing; one that exists already is success."""
        ...


def open_blob_store(url: str, *, file_mode: int = 0o600, dir_mode: int = 0o700) -> BlobStore:
    """The modes apply to backends that create files (``file://``)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        from ephemera.blobs.local import LocalBlobStore

        return LocalBlobStore(Path(parts.path), file_mode=file_mode, dir_mode=dir_mode)
    if parts.scheme == "memory":
        from ephemera.blobs.memory import MemoryBlobStore

        return MemoryBlobStore()
    if parts.scheme == "s3":
        # Imported here: only a deployment on S3 pays for loading boto3, or needs it installed.
        require("s3", "The S3 blob store")
        from ephemera.blobs.s3 import S3BlobStore

        return S3BlobStore.from_url(url)
    raise InvalidInput(f"unsupported blob store URL scheme {parts.scheme!r}")
