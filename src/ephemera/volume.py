"""The local volume that holds the embedded backends: file modes.

Modes: data files are created with ``file_mode`` and folders with ``dir_mode`` in the call that
creates them (so they are never looser, even for an instant), then set to exactly that mode:
a umask may only take bits away, and an operator who configures group access means it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from ephemera.config import Settings


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
        os.chmod(folder, mode)


def create_file(path: Path, mode: int, flags: int = os.O_WRONLY) -> int:
    """Create ``path`` (it must not exist) with exactly ``mode``; return its descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    """At start-up: create the data dir and check modes. Returns warnings."""
    make_dirs(settings.data_dir, settings.dir_mode_bits)
    return check_modes(settings)
