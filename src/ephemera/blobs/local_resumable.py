"""Resumable uploads on a local directory: one segment file per writer, in staging.

An upload's segments live in ``staging/tus-{upload_id}/{piece}``. A writer appends to its
own segment; a checkpoint (every ``CHECKPOINT`` bytes) is an ``fsync``, then the caller
records the offset. Writeback is started every few MiB without waiting, so a checkpoint's
fsync has little left to flush and the body keeps flowing meanwhile. A writer
that directly follows the clean release of the last segment's writer continues that
segment, truncated to its recorded length; any other (after a takeover of a stale claim,
even one that failed and let go cleanly) starts a new segment, so an old writer, if it is
still running, only ever appends past what was recorded in a file nobody extends again.

Completing gathers the whole body as ``whole-*`` in the upload's folder: a one-segment upload
(the common case: one writer at a time) hard-links its file, no copy; several segments are
concatenated. The commit renames it into place, inside the commit transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

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


CHECKPOINT = 32 * 1024 * 1024
KICK = 4 * 1024 * 1024
COPY_CHUNK = 1024 * 1024
PREFIX = "tus-"
WHOLE = "whole-"


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
            if not self._dir.exists():
                make_dirs(self._dir, store.dir_mode)
                # The folder's entry in staging must be durable before an offset is
                # recorded: a power loss would otherwise lose recorded bytes.
                fsync_dir(self._dir.parent)
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


class LocalAssembled:
    """The whole body in the upload's folder; the commit renames it into place."""

    def __init__(self, store: LocalBlobStore, path: Path, key: str) -> None:
        self._store = store
        self._path = path
        self._key = key

    def sha256(self) -> str:
        hasher = hashlib.sha256()
        try:
            with open(self._path, "rb") as f:
                while data := f.read(COPY_CHUNK):
                    hasher.update(data)
        except OSError as exc:
            raise write_error("read", exc) from exc
        return hasher.hexdigest()

    def commit(self) -> None:
        target = self._store.local_path(self._key)
        try:
            make_dirs(target.parent, self._store.dir_mode)
            os.rename(self._path, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise write_error("commit", exc) from exc

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._path.unlink(missing_ok=True)


def assemble(
    store: LocalBlobStore, upload_id: str, pieces: Pieces, length: int, key: str
) -> LocalAssembled:
    segments = [(int(n), int(size)) for n, size in pieces.get("segments", [])]
    if sum(size for _, size in segments) != length:
        raise StorageError(f"upload {upload_id}: recorded segments do not add up to its length")
    folder = upload_dir(store, upload_id)
    # Each attempt its own name: a stale attempt's abort never removes this one's.
    whole = folder / f"{WHOLE}{uuid.uuid4().hex}"
    try:
        if not segments:
            make_dirs(folder, store.dir_mode)  # an empty upload never had a writer
        for left in folder.glob(f"{WHOLE}*"):
            # Left by attempts that stopped before their commit (this claim holds the
            # upload now: none of them can commit any more).
            left.unlink(missing_ok=True)
        if len(segments) == 1:
            # One segment: its writers all let go (a writer taken over never has its
            # segment continued, so a lone segment has no stale writer), and none can
            # write past the length: link it, no copy.
            source = folder / str(segments[0][0])
            os.truncate(source, length)  # bytes past the recorded length never count
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(source, whole)
        else:
            _concatenate(folder, segments, whole, store.file_mode)
        fsync_dir(folder)
    except OSError as exc:
        raise write_error("commit", exc) from exc
    return LocalAssembled(store, whole, key)


def _concatenate(folder: Path, segments: list[tuple[int, int]], whole: Path, mode: int) -> None:
    fd = create_file(whole, mode)
    try:
        for number, size in segments:
            with open(folder / str(number), "rb") as f:
                left = size
                while left:
                    data = f.read(min(COPY_CHUNK, left))
                    if not data:
                        raise StorageError(f"segment {number} of {folder.name} is short")
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    left -= len(data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        whole.unlink(missing_ok=True)
        raise
    os.close(fd)


def discard(store: LocalBlobStore, upload_id: str) -> None:
    try:
        shutil.rmtree(upload_dir(store, upload_id))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot remove upload {upload_id}: {exc.strerror}") from exc


def upload_of_staged(name: str) -> str | None:
    return name.removeprefix(PREFIX) if name.startswith(PREFIX) else None
