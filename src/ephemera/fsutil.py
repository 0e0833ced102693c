"""Files and folders with exact modes, and telling a full volume from other failures.

Kept free of settings and databases, so the blob stores and the catalog can use it.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ephemera.errors import InsufficientStorage, StorageError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(exc: OSError) -> bool:
    return exc.errno in _NO_SPACE


def write_error(action: str, exc: OSError) -> StorageError:
    """The error of a failed blob write: a full volume says that nothing was stored."""
    if is_no_space(exc):
        return InsufficientStorage(
            f"cannot {action} blob: the volume is full ({exc.strerror}); nothing was stored"
        )
    return StorageError(f"cannot {action} blob: {exc.strerror}")


# Per thread: the folders whose fsync a ``dir_syncs`` block has put off to its end.
_put_off = threading.local()


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (creations, renames, removals) durable; inside a
    ``dir_syncs`` block of this thread, at the block's end."""
    pending: set[Path] | None = getattr(_put_off, "folders", None)
    if pending is not None:
        pending.add(path)
        return
    _fsync_dir(path)


@contextmanager
def dir_syncs() -> Iterator[None]:
    """Put off this thread's ``fsync_dir`` calls to the end of the block, then sync each
    folder once: many renames into one folder cost one folder sync. The block ends only
    once they are all durable (an OSError otherwise): what follows it may rely on them."""
    if getattr(_put_off, "folders", None) is not None:
        yield  # already inside one: the outer block syncs
        return
    folders: set[Path] = set()
    _put_off.folders = folders
    try:
        yield
    finally:
        _put_off.folders = None
    for folder in sorted(folders):
        _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents, each with exactly ``mode``."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            continue
        # Keep the setgid bit a shared parent passed on, so files keep inheriting its group.
        os.chmod(folder, mode | (os.stat(folder).st_mode & stat.S_ISGID))


def create_file(path: Path, mode: int, flags: int = os.O_WRONLY) -> int:
    """Create ``path`` (it must not exist) with exactly ``mode``; return its descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def binary_size(n: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.0 GiB``."""
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"
