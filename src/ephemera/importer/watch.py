"""Watching the root: which files appeared or changed, and when each one is complete.

watchdog's observer thread only records paths (no I/O of ours there); a settle thread stats
them and decides when a file is complete. A file is complete when its size and mtime stayed
the same for ``settle_s`` seconds (the only sign a polling observer, for network mounts, can
give), or sooner when inotify reported it closed after writing: then one more look a short
grace later, at the same size and mtime, is enough (a file reopened for writing, or renamed
away like a write-then-rename temporary, does not pass it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ephemera.importer.scan import Filter, FoundFile, relative, scan, stat_file

log = logging.getLogger("ephemera.importer")

# What the watch listens to: not opens, nor closes without writing (the importer's own reads
# of the files would otherwise wake it once per file).
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    EventsLostEvent,
]
# A file closed after writing is complete if it is still the same this long after.
CLOSED_GRACE_S = 0.25


@dataclass(slots=True)
class _Pending:
    size: int
    mtime_ns: int
    since: float
    closed: bool


class Settler:
    """Files seen changing, until each one is complete; thread-safe.

    ``note`` and ``forget`` are cheap (the observer thread calls them); ``tick`` stats what is
    pending and passes each complete file to ``ready`` (outside the lock: it may block on a
    full queue).
    """

    def __init__(
        self,
        root: Path,
        wanted: Filter,
        ready: Callable[[FoundFile], object],
        *,
        settle_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.wanted = wanted
        self.ready = ready
        self.settle_s = settle_s
        self.grace_s = min(settle_s, CLOSED_GRACE_S)
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._folders: set[Path] = set()

    def note(self, path: str, *, closed: bool = False) -> None:
        """``path`` (relative) was written to, or closed after writing: the latest note
        says which (a file closed, then opened again for writing, is no longer closed)."""
        if not self.wanted.wanted(path):
            return
        with self._lock:
            seen = self._pending.get(path)
            if seen is None:
                self._pending[path] = _Pending(-1, -1, self._clock(), closed)
            else:
                seen.closed = closed

    def note_folder(self, folder: Path) -> None:
        """A folder appeared (made or moved in): its files are looked for on the next tick."""
        with self._lock:
            self._folders.add(folder)

    def forget(self, path: str) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def forget_folder(self, folder: str) -> None:
        prefix = folder.rstrip("/") + "/"
        with self._lock:
            for path in [p for p in self._pending if p.startswith(prefix)]:
                del self._pending[path]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def tick(self) -> None:
        with self._lock:
            folders, self._folders = self._folders, set()
        for folder in folders:
            for inside in scan(folder, Filter()):
                path = relative(self.root, inside.absolute)
                if path is not None:
                    self.note(path)
        with self._lock:
            paths = list(self._pending)
        now = self._clock()
        complete: list[FoundFile] = []
        for path in paths:
            found = stat_file(self.root, path)
            with self._lock:
                seen = self._pending.get(path)
                if seen is None:
                    continue
                if found is None:  # gone (or no longer a regular file): nothing to import
                    del self._pending[path]
                    continue
                version = (found.size, found.mtime_ns)
                wait = self.grace_s if seen.closed else self.settle_s
                if version != (seen.size, seen.mtime_ns):
                    seen.size, seen.mtime_ns, seen.since = found.size, found.mtime_ns, now
                elif now - seen.since >= wait:
                    del self._pending[path]
                    complete.append(found)
        for found in complete:
            self.ready(found)


class _Events(FileSystemEventHandler):
    """Turns watchdog's events into notes for the settler; no I/O here."""

    def __init__(self, root: Path, settler: Settler) -> None:
        self.root = root
        self.settler = settler

    def _rel(self, raw: bytes | str) -> str | None:
        if not raw:
            return None
        return relative(self.root, Path(os.fsdecode(raw)))

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, EventsLostEvent):  # the kernel queue overflowed: look again
            self.settler.note_folder(self.root)
            return
        src, dest = self._rel(event.src_path), self._rel(event.dest_path)
        if isinstance(event, FileClosedEvent) and src:
            self.settler.note(src, closed=True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent | FileAttribEvent) and src:
            # Attributes too: a copy that sets its mtime after closing (cp -p, shutil.copy2, a
            # camera) is complete only at that final mtime; a chmod may make a file readable.
            self.settler.note(src)
        elif isinstance(event, FileMovedEvent):
            if src:
                self.settler.forget(src)
            if dest:
                self.settler.note(dest)
        elif isinstance(event, FileDeletedEvent) and src:
            self.settler.forget(src)
        elif isinstance(event, DirCreatedEvent) and src:
            self.settler.note_folder(self.root / src)
        elif isinstance(event, DirMovedEvent):
            if src:
                self.settler.forget_folder(src)
            if dest:
                self.settler.note_folder(self.root / dest)
        elif isinstance(event, DirDeletedEvent) and src:
            self.settler.forget_folder(src)


class Watcher:
    """The observer (inotify, or polling with ``poll``) and the settle thread, started and
    stopped together."""

    def __init__(
        self,
        root: Path,
        wanted: Filter,
        ready: Callable[[FoundFile], object],
        *,
        settle_s: float = 1.0,
        poll: bool = False,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.root = root
        self.settler = Settler(root, wanted, ready, settle_s=settle_s)
        self._observer: BaseObserver = (
            PollingObserver(timeout=poll_interval_s) if poll else Observer()
        )
        self._observer.schedule(
            _Events(root, self.settler), str(root), recursive=True, event_filter=EVENTS
        )
        self._interval = min(0.25, max(settle_s / 4, 0.02))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._settle, name="import-settle", daemon=True)

    def start(self) -> None:
        """Start watching; OSError (e.g. the inotify watch limit) leaves nothing running."""
        self._observer.start()
        self._thread.start()

    def retry(self, path: str) -> None:
        """Look at ``path`` again once it settles (it changed while being read)."""
        self.settler.note(path)

    def stop(self) -> None:
        self._stop.set()
        self._observer.stop()
        if self._observer.is_alive():  # not when its start failed
            self._observer.join(timeout=10)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _settle(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.settler.tick()
            except Exception:  # a bug here must not silently end the watch: log and go on
                log.exception("import settle tick failed")
