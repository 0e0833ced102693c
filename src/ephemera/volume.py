"""The local volume that holds the embedded backends: file modes, free space, the reserve.

Modes: data files are created with ``file_mode`` and folders with ``dir_mode`` in the call that
creates them (so they are never looser, even for an instant), then set to exactly that mode:
a umask may only take bits away, and an operator who configures group access means it.

Free space is watched on the folders that hold the SQLite database and the local blob root
(nothing is watched when both live elsewhere: PostgreSQL and S3). Below ``reserve_bytes`` free,
uploads are refused, so the last bytes of the volume stay for the database, which must write
(to its WAL) even to delete. The reserve is a file of ``reserve_bytes`` in the data dir, held
by ``ephemera serve``: a cleanup that starts with free space low releases it, and so does
opening a store on a full volume, so both work on a volume filled to the last byte; the
scheduler takes it again once space is back.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from ephemera.config import Settings
from ephemera.errors import InsufficientStorage
from ephemera.fsutil import binary_size, create_file, make_dirs

log = logging.getLogger("ephemera.volume")

RESERVE_FILE = "reserve"
_CHUNK = 1024 * 1024


def sqlite_path(settings: Settings) -> Path | None:
    url = make_url(settings.resolved_database_url())
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def blob_root(settings: Settings) -> Path | None:
    parts = urlsplit(settings.resolved_blob_url())
    return Path(parts.path) if parts.scheme == "file" else None


def check_modes(settings: Settings) -> list[str]:
    """One warning for each existing data path whose mode is looser than configured."""
    wanted: list[tuple[Path, int, str]] = [(settings.data_dir, settings.dir_mode_bits, "dir_mode")]
    database = sqlite_path(settings)
    if database is not None:
        for suffix in ("", "-wal", "-shm"):
            path = database.with_name(database.name + suffix)
            wanted.append((path, settings.file_mode_bits, "file_mode"))
    root = blob_root(settings)
    if root is not None:
        wanted.append((root, settings.dir_mode_bits, "dir_mode"))
    warnings = []
    for path, mode, setting in wanted:
        try:
            actual = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if actual & ~mode:
            warnings.append(
                f"{path} has mode {actual:04o}, looser than {setting} {mode:04o}: other local "
                f"users may read it (chmod {mode:04o} {path})"
            )
    return warnings


def prepare_data_dir(settings: Settings) -> list[str]:
    """At start-up: create the data dir, check modes, take the reserve. Returns warnings."""
    make_dirs(settings.data_dir, settings.dir_mode_bits)
    warnings = check_modes(settings)
    volume = Volume(settings)
    held = volume.restore_reserve()
    if settings.reserve_bytes and volume.watched and not held:
        warnings.append(
            f"no reserve of {binary_size(settings.reserve_bytes)} taken in {settings.data_dir}: "
            f"{volume.describe_free()}, below low_space_bytes plus reserve_bytes"
        )
    return warnings


class Volume:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reserve_path = settings.data_dir / RESERVE_FILE
        database = sqlite_path(settings)
        folders = [None if database is None else database.parent, blob_root(settings)]
        if any(folders):
            # The reserve only helps the volume it is on; the data dir holds the database by
            # default.
            folders.append(Path(os.path.abspath(settings.data_dir)))
        self.watched = list(dict.fromkeys(p for p in folders if p is not None))

    def _free_on(self) -> tuple[int, Path] | None:
        lowest: tuple[int, Path] | None = None
        for path in self.watched:
            existing = path
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            try:
                st = os.statvfs(existing)
            except OSError:
                continue
            free = st.f_bavail * st.f_frsize
            if lowest is None or free < lowest[0]:
                lowest = (free, path)
        return lowest

    def free_bytes(self) -> int | None:
        """Free bytes on the fullest watched volume; None when no backend is local."""
        found = self._free_on()
        return None if found is None else found[0]

    def describe_free(self) -> str:
        found = self._free_on()
        return "not watched" if found is None else f"{binary_size(found[0])} free on {found[1]}"

    def low_space(self) -> str | None:
        """A description of the shortage when free space is below ``low_space_bytes``."""
        found = self._free_on()
        if found is None or found[0] >= self.settings.low_space_bytes:
            return None
        return (
            f"low space: {binary_size(found[0])} free on {found[1]}, threshold "
            f"{binary_size(self.settings.low_space_bytes)}"
        )

    def check_room(self) -> None:
        """Refuse new bytes when what is left belongs to the database and cleanup."""
        found = self._free_on()
        if found is not None and found[0] < self.settings.reserve_bytes:
            raise InsufficientStorage(
                f"the volume is full: {binary_size(found[0])} free on {found[1]}, and the last "
                f"{binary_size(self.settings.reserve_bytes)} are kept for cleanup; nothing was "
                "stored"
            )

    def release_reserve(self) -> int:
        """Delete the reserve file; return the bytes it held."""
        try:
            size = self.reserve_path.stat().st_size
            self.reserve_path.unlink()
        except FileNotFoundError:
            return 0
        log.warning(
            "released the reserve of %s in %s",
            binary_size(size),
            self.settings.data_dir,
            extra={"action": "reserve.release"},
        )
        return size

    def release_reserve_if_low(self) -> int:
        return self.release_reserve() if self.low_space() is not None else 0

    def release_reserve_if_full(self) -> int:
        free = self.free_bytes()
        full = free is not None and free < self.settings.reserve_bytes
        return self.release_reserve() if full else 0

    def restore_reserve(self) -> bool:
        """Take the reserve if it is missing and the volume can spare it; True if it is held.

        It is taken only while it leaves free space at or above ``low_space_bytes``, so the
        reserve itself never makes the volume low.
        """
        size = self.settings.reserve_bytes
        if not self.watched:
            return False
        try:
            held: int | None = self.reserve_path.stat().st_size
        except FileNotFoundError:
            held = None
        if held == size and size:
            return True
        if held is not None:
            self.release_reserve()  # resized, or turned off
        if not size:
            return False
        free = self.free_bytes()
        if free is None or free - size < self.settings.low_space_bytes:
            return False
        # Written aside and renamed: a reserve is whole or absent, never a partial file; one
        # name, so what a crash left behind is simply replaced.
        partial = self.reserve_path.with_name(f"{RESERVE_FILE}.partial")
        try:
            partial.unlink(missing_ok=True)
            fd = create_file(partial, self.settings.file_mode_bits)
            try:
                _allocate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(partial, self.reserve_path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            log.warning("cannot take the reserve: %s", exc.strerror, extra={"action": "reserve"})
            return False
        log.info(
            "holding a reserve of %s in %s",
            binary_size(size),
            self.settings.data_dir,
            extra={"action": "reserve.take"},
        )
        return True


def _allocate(fd: int, size: int) -> None:
    # Real blocks, not a sparse file: releasing a sparse file frees nothing.
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    zeros = bytes(_CHUNK)
    written = 0
    while written < size:
        written += os.write(fd, zeros[: min(_CHUNK, size - written)])
