"""Resumable uploads on a local directory: one segment file per writer, in staging.

An upload's segments live in ``staging/tus-{upload_id}/{piece}``. A writer appends to its
own segment; a checkpoint (every ``CHECKPOINT`` bytes) is an ``fsync``, then the caller
records the offset. Writeback is started every few MiB without waiting, so a checkpoint's
fsync has little left to flush and the body keeps flowing meanwhile. A writer
that directly follows the clean release of the last segment's writer continues that
segment, truncated to its recorded length; any other (after a takeover of a stale claim,
even one that failed and let go cleanly) starts a new segment, so an old writer, if it is
still running, only ever appends past what was recorded in a file nobody extends again.

Completing a one-segment upload (the common case: one writer at a time) hard-links the file
into place, no copy; several segments are concatenated.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ephemera.blobs import BlobWriter
from ephemera.blobs.resumable import Pieces
from ephemera.errors import StorageError
from ephemera.fsutil import create_file, fsync_dir, make_dirs, write_error


class LocalBlobStore(Protocol):
    """What resumable uploads need of the local store (``ephemera.blobs.local``)."""

    @property
    def staging_dir(self) -> Path: ...

    @property
    def dir_mode(self) -> int: ...

    @property
    def file_mode(self) -> int: ...

    def local_path(self, key: str) -> Path: ...

    def writer(self, key: str) -> BlobWriter: ...


CHECKPOINT = 32 * 1024 * 1024
KICK = 4 * 1024 * 1024
COPY_CHUNK = 1024 * 1024
PREFIX = "tus-"


class LocalPieceWriter:
    def __init__(
        self,
        store: LocalBlobStore,
        upload_id: str,
        pieces: Pieces,
        offset: int,
        continue_last: bool,
        reserve: Callable[[], int],
    ) -> None:
        self._dir = upload_dir(store, upload_id)
        self._segments: list[list[int]] = [
            [int(n), int(size)] for n, size in pieces.get("segments", [])
        ]
        self._written = offset
        self._durable = offset
        self._kicked = offset
        self._fd: int | None = None
        try:
            make_dirs(self._dir, store.dir_mode)
            if continue_last and self._segments:
                number, size = self._segments[-1]
                fd = os.open(self._dir / str(number), os.O_WRONLY)
                os.ftruncate(fd, size)
                os.lseek(fd, size, os.SEEK_SET)
            else:
                number = reserve()
                self._segments.append([number, 0])
                fd = create_file(self._dir / str(number), store.file_mode)
                fsync_dir(self._dir)
        except OSError as exc:
            raise write_error("stage", exc) from exc
        self._fd = fd

    @property
    def written(self) -> int:
        return self._written

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise StorageError("write after close")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise write_error("write", exc) from exc
        self._written += len(data)
        if self._written - self._kicked >= KICK:
            # Start writing back what is not yet on disk (without waiting), so the fsync of
            # the next checkpoint has little left to wait for and the body keeps flowing.
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self._kicked = self._written

    def checkpoint_due(self) -> bool:
        return self._written - self._durable >= CHECKPOINT

    def checkpoint(self, final: bool) -> tuple[int, Pieces]:
        if self._fd is None:
            raise StorageError("checkpoint after close")
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise write_error("sync", exc) from exc
        self._segments[-1][1] += self._written - self._durable
        self._durable = self._written
        return self._durable, {"segments": [list(s) for s in self._segments]}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def upload_dir(store: LocalBlobStore, upload_id: str) -> Path:
    if "/" in upload_id or upload_id.startswith("."):
        raise StorageError(f"invalid upload ID {upload_id!r}")
    return store.staging_dir / f"{PREFIX}{upload_id}"


def assemble(store: LocalBlobStore, upload_id: str, pieces: Pieces, length: int, key: str) -> None:
    segments = [(int(n), int(size)) for n, size in pieces.get("segments", [])]
    if sum(size for _, size in segments) != length:
        raise StorageError(f"upload {upload_id}: recorded segments do not add up to its length")
    folder = upload_dir(store, upload_id)
    if len(segments) == 1:
        source = folder / str(segments[0][0])
        target = store.local_path(key)
        try:
            # Bytes past the recorded length never count.
            os.truncate(source, length)
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            make_dirs(target.parent, store.dir_mode)
            # Left by an attempt that stopped before its commit (the record is pending).
            target.unlink(missing_ok=True)
            os.link(source, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise write_error("commit", exc) from exc
        return
    writer = store.writer(key)
    try:
        for number, size in segments:
            with open(folder / str(number), "rb") as f:
                left = size
                while left:
                    data = f.read(min(COPY_CHUNK, left))
                    if not data:
                        raise StorageError(f"upload {upload_id}: segment {number} is short")
                    writer.write(data)
                    left -= len(data)
        writer.commit()
    except OSError as exc:
        writer.abort()
        raise write_error("commit", exc) from exc
    except BaseException:
        writer.abort()
        raise


def discard(store: LocalBlobStore, upload_id: str) -> None:
    try:
        shutil.rmtree(upload_dir(store, upload_id))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot remove upload {upload_id}: {exc.strerror}") from exc


def upload_of_staged(name: str) -> str | None:
    return name.removeprefix(PREFIX) if name.startswith(PREFIX) else None
