"""Blobs as files under one directory: ``sessions/{sid}/{aid}``, staged in ``staging/``.

Staging lives on the same filesystem as the blobs, so a commit is one atomic ``rename``.
The file is fsynced before the rename and its directory after it, so a committed blob
survives a power loss; a crash before the rename leaves only a staging file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ephemera.blobs import BlobStat, StagedBlob, check_key
from ephemera.blobs.resumable import Pieces
from ephemera.errors import BlobNotFound, StorageError
from ephemera.fsutil import create_file, fsync_dir, make_dirs, write_error

if TYPE_CHECKING:
    # Imported where used: resumable uploads are not every process's work.
    from ephemera.blobs import local_resumable


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, UTC)


class LocalBlobWriter:
    def __init__(self, store: LocalBlobStore, key: str) -> None:
        self._store = store
        self._key = key
        self._staging = store.staging_dir / f"{uuid.uuid4().hex}.part"
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        self._synced = False
        try:
            fd = create_file(self._staging, store.file_mode)
            # Unbuffered: chunks arrive large already, and a buffer would only add a copy.
            self._file: io.FileIO | None = open(fd, "wb", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise write_error("stage", exc) from exc

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise StorageError("write after commit or abort")
        self._hash.update(data)
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
        except OSError as exc:
            self.abort()
            raise write_error("write", exc) from exc
        self._size += len(data)
        self._synced = False

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sync(self) -> None:
        if self._file is None:
            raise StorageError("sync after commit or abort")
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self.abort()
            raise write_error("sync", exc) from exc
        self._synced = True

    def commit(self) -> BlobStat:
        if self._file is None:
            raise StorageError("commit after commit or abort")
        if not self._synced:
            self.sync()
        assert self._file is not None
        target = self._store.local_path(self._key)
        try:
            self._file.close()
            self._file = None
            make_dirs(target.parent, self._store.dir_mode)
            os.rename(self._staging, target)
            self._done = True
            fsync_dir(target.parent)
            st = target.stat()
        except OSError as exc:
            self.abort()
            raise write_error("commit", exc) from exc
        return BlobStat(self._key, st.st_size, _mtime(st))

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._done:
            self._done = True
            self._staging.unlink(missing_ok=True)


class LocalBlobStore:
    def __init__(self, root: Path, *, file_mode: int = 0o600, dir_mode: int = 0o700) -> None:
        self.root = root
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.blob_dir = root / "sessions"
        self.staging_dir = root / "staging"
        self._ready = False

    def _ensure_dirs(self) -> None:
        # Done on first use, not in the constructor: opening a store does no I/O.
        if not self._ready:
            try:
                make_dirs(self.blob_dir, self.dir_mode)
                make_dirs(self.staging_dir, self.dir_mode)
            except OSError as exc:
                raise StorageError(f"cannot create {self.root}: {exc.strerror}") from exc
            self._ready = True

    def local_path(self, key: str) -> Path:
        return self.root / check_key(key)

    def writer(self, key: str) -> LocalBlobWriter:
        check_key(key)
        self._ensure_dirs()
        return LocalBlobWriter(self, key)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.local_path(key), "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no blob at {key}") from exc
        except OSError as exc:
            raise StorageError(f"cannot open blob {key}: {exc.strerror}") from exc

    def stat(self, key: str) -> BlobStat:
        try:
            st = self.local_path(key).stat()
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no blob at {key}") from exc
        except OSError as exc:
            raise StorageError(f"cannot stat blob {key}: {exc.strerror}") from exc
        return BlobStat(key, st.st_size, _mtime(st))

    def delete(self, key: str) -> None:
        try:
            self.local_path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete blob {key}: {exc.strerror}") from exc

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Unlink by folder, each name relative to its open folder, in name order.

        The kernel then resolves one name per file instead of a whole path, and each folder
        relative to the open root: deleting a batch costs about what ``find -delete`` pays
        per file.
        """
        by_folder: dict[str, list[str]] = {}
        for key in keys:
            folder, _, name = check_key(key).rpartition("/")
            by_folder.setdefault(folder, []).append(name)
        failed: dict[str, str] = {}
        if not by_folder:
            return failed
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return failed  # no store at all: nothing of it is left
        except OSError as exc:
            return {f"{f}/{n}": str(exc.strerror) for f, names in by_folder.items() for n in names}
        try:
            for folder in sorted(by_folder):
                failed.update(_unlink_in(root, folder, sorted(by_folder[folder])))
        finally:
            os.close(root)
        return failed

    def delete_prefix(self, prefix: str) -> int:
        """Move the folder into staging in one atomic rename, then remove it there.

        Of two callers at once exactly one wins the rename; the other finds it gone, which
        is success. A crash after the rename leaves a staging leftover, which orphan
        reconciliation removes.
        """
        path = self.local_path(prefix.rstrip("/"))
        self._ensure_dirs()
        doomed = self.staging_dir / f"{uuid.uuid4().hex}.trash"
        try:
            os.rename(path, doomed)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        except OSError as exc:
            raise StorageError(f"cannot delete {prefix}: {exc.strerror}") from exc
        try:
            with os.scandir(doomed) as entries:
                count = sum(1 for e in entries if e.is_file(follow_symlinks=False))
            shutil.rmtree(doomed)
        except OSError as exc:
            raise StorageError(f"cannot delete {prefix}: {exc.strerror}") from exc
        return count

    def list(self, prefix: str = "") -> Iterator[BlobStat]:
        base = prefix.rstrip("/")
        start = self.local_path(base) if base else self.root
        if not start.exists():
            return
        if start.is_file():
            yield self.stat(base)
            return
        yield from self._walk(start, base)

    def _walk(self, directory: Path, key_prefix: str) -> Iterator[BlobStat]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc.strerror}") from exc
        for entry in entries:
            key = f"{key_prefix}/{entry.name}" if key_prefix else entry.name
            if key == "staging":
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key)
            elif entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    yield BlobStat(key, entry.stat().st_size, _mtime(entry.stat()))

    def list_children(self, prefix: str, after: str | None = None) -> Iterator[str]:
        # Names only, no stat and no Path objects: orphan reconciliation lists every session
        # folder with this, and should cost what ``find -type f`` pays per name.
        path = os.path.join(self.root, check_key(prefix.rstrip("/")))
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        except OSError as exc:
            raise StorageError(f"cannot list {prefix}: {exc.strerror}") from exc
        if after is not None:
            # A folder is read whole whatever the position: sort only what comes after it.
            names = [name for name in names if name > after]
        names.sort()
        return iter(names)

    def list_staged(self) -> Iterator[StagedBlob]:
        try:
            entries = list(os.scandir(self.staging_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                yield StagedBlob(entry.name, st.st_size, _mtime(st))

    def delete_staged(self, name: str) -> None:
        if "/" in name or name.startswith("."):
            raise StorageError(f"invalid staging name {name!r}")
        path = self.staging_dir / name
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete staged {name}: {exc.strerror}") from exc

    # -- resumable uploads (ephemera.blobs.resumable) -------------------------------------------

    def append_to(
        self,
        upload_id: str,
        key: str,
        pieces: Pieces,
        offset: int,
        continue_last: bool,
        reserve: Callable[[], int],
    ) -> local_resumable.LocalPieceWriter:
        from ephemera.blobs import local_resumable

        self._ensure_dirs()
        return local_resumable.LocalPieceWriter(
            self, upload_id, pieces, offset, continue_last, reserve
        )

    def assemble(
        self, upload_id: str, pieces: Pieces, length: int, key: str
    ) -> local_resumable.LocalAssembled:
        from ephemera.blobs import local_resumable

        check_key(key)
        return local_resumable.assemble(self, upload_id, pieces, length, key)

    def discard_upload(self, upload_id: str, pieces: Pieces) -> None:
        from ephemera.blobs import local_resumable

        local_resumable.discard(self, upload_id)

    def upload_of_staged(self, name: str) -> str | None:
        from ephemera.blobs import local_resumable

        return local_resumable.upload_of_staged(name)

    def check(self) -> None:
        self._ensure_dirs()
        if not os.access(self.staging_dir, os.W_OK):
            raise StorageError(f"{self.staging_dir} is not writable")


def _unlink_in(root: int, folder: str, names: Sequence[str]) -> dict[str, str]:
    """Unlink ``names`` in ``folder`` (relative to the open ``root``); what would not go."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
    except FileNotFoundError:
        return {}  # the whole folder is gone: so are its blobs
    except OSError as exc:
        return {f"{folder}/{n}": str(exc.strerror) for n in names}
    failed: dict[str, str] = {}
    try:
        for name in names:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed[f"{folder}/{name}"] = str(exc.strerror)
    finally:
        os.close(fd)
    return failed
