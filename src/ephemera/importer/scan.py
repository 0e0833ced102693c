"""Finding the files under a root: which ones count, and each one's version (size, mtime)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

# Names that say a file is still being written by a downloader or an editor: they are
# imported once renamed to their final name (a move into place counts as a new file).
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp")


@dataclass(frozen=True, slots=True)
class FoundFile:
    """One version of a regular file under the root: ``path`` is relative, POSIX style."""

    path: str
    absolute: Path
    size: int
    mtime_ns: int


class Filter:
    """Which relative paths count: not hidden, not partial, and matching a pattern if any.

    A pattern matches the relative POSIX path or the bare name, with fnmatch rules, where
    ``*`` also matches ``/``: ``*.png`` finds PNGs at any depth, ``raw/*.png`` those anywhere
    under ``raw``, ``raw/?.png`` only one-character names directly in ``raw``.
    """

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)

    @staticmethod
    def skipped_name(name: str) -> bool:
        return name.startswith(".") or name.endswith("~") or name.lower().endswith(PARTIAL_SUFFIXES)

    def wanted(self, path: str) -> bool:
        parts = PurePosixPath(path).parts
        if not parts or any(part.startswith(".") for part in parts[:-1]):
            return False
        name = parts[-1]
        if self.skipped_name(name):
            return False
        if not self.patterns:
            return True
        return any(fnmatchcase(path, p) or fnmatchcase(name, p) for p in self.patterns)


def relative(root: Path, path: Path) -> str | None:
    """``path`` relative to ``root`` as POSIX text; None when it is not under ``root``."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    text = rel.as_posix()
    return None if text in ("", ".") else text


def stat_file(root: Path, path: str) -> FoundFile | None:
    """The current version of ``root/path``; None unless it is a regular file (no symlink)."""
    absolute = root / path
    try:
        st = absolute.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FoundFile(path, absolute, st.st_size, st.st_mtime_ns)


def scan(
    root: Path,
    wanted: Filter,
    on_error: Callable[[str, str], None] = lambda path, error: None,
) -> Iterator[FoundFile]:
    """Every wanted regular file under ``root``, lazily, one directory listing at a time.

    Iterative (no recursion limit on deep trees); symbolic links are never followed, neither
    to folders (no loops, no escaping the root) nor to files; hidden folders are not entered.
    A folder that cannot be listed is reported through ``on_error`` and skipped.
    """
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            listing = os.scandir(folder)
        except OSError as exc:
            on_error(relative(root, folder) or ".", _reason(exc))
            continue
        with listing:
            for entry in listing:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith("."):
                            pending.append(Path(entry.path))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    path = relative(root, Path(entry.path))
                    if path is None or not wanted.wanted(path):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    on_error(relative(root, Path(entry.path)) or entry.name, _reason(exc))
                    continue
                yield FoundFile(path, Path(entry.path), st.st_size, st.st_mtime_ns)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
