"""The importer: scan, then watch; upload threads; exactly once per file version.

The scan (and, with ``watch``, the watcher) feed a bounded queue, so memory stays flat however
many files there are; ``workers`` threads take files from it and import them through the
target. What the ledger already holds (same path, size and mtime) is skipped without reading.

Each file is read twice: first to hash it (a read that also confirms the version: size and
mtime the same before and after), then to upload it with that sha256, so that the store (or
the server) verifies the bytes that arrive and stores nothing when they differ. A file changed
between the two reads is then simply not that version: retried once it settles when watching,
listed otherwise. The second read of a small file comes from the page cache; a large one costs
a second pass over the disk, the price of never storing a corrupt transfer.

Every failure of one file is recorded with its path and the run goes on; only a session that
can no longer be reached ends it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ephemera.errors import (
    ChecksumMismatch,
    EphemeraError,
    Forbidden,
    NotFound,
    StorageError,
    Unauthenticated,
)
from ephemera.importer.scan import Filter, FoundFile, scan, stat_file
from ephemera.importer.targets import Target
from ephemera.importer.watch import Watcher
from ephemera.models import FollowUp, ImportEntry, ImportOrigin

log = logging.getLogger("ephemera.importer")

CHUNK_SIZE = 1024 * 1024
MAX_ERRORS_LISTED = 10_000
# Errors after which no other file can succeed either: the run stops.
FATAL = (NotFound, Unauthenticated, Forbidden)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to import: the files under ``root`` that ``patterns`` match, into a session."""

    root: Path
    session_id: str
    source: str
    kind: str = "input"
    patterns: tuple[str, ...] = ()
    then: FollowUp | None = None
    workers: int = 4
    watch: bool = False
    poll: bool = False
    settle_s: float = 1.0


@dataclass(frozen=True, slots=True)
class FileError:
    path: str
    error: str


@dataclass(frozen=True, slots=True)
class Progress:
    found: int
    imported: int
    skipped: int
    failed: int
    bytes: int

    @property
    def done(self) -> int:
        return self.imported + self.skipped + self.failed


@dataclass(slots=True)
class Summary:
    session_id: str
    source: str
    found: int = 0
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    errors: list[FileError] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Known:
    """The latest ledger entry of a path."""

    size: int
    mtime_ns: int
    artifact_id: str
    task_id: str | None


class FileChanged(Exception):
    """The file's size or mtime changed while it was read: not that version."""


class Aborted(Exception):
    """The run was told to abort in-flight uploads."""


def hash_file(file: BinaryIO, version: FoundFile, abort: threading.Event) -> str:
    """The sha256 of ``version``'s bytes; FileChanged unless exactly those were read."""
    digest = hashlib.sha256()
    size = 0
    if _changed(file, version):
        raise FileChanged
    while chunk := file.read(CHUNK_SIZE):
        if abort.is_set():
            raise Aborted
        size += len(chunk)
        if size > version.size:
            raise FileChanged
        digest.update(chunk)
    if size != version.size or _changed(file, version):
        raise FileChanged
    return digest.hexdigest()


class UploadReader:
    """A file's chunks for the upload; raises FileChanged (so the upload aborts and stores
    nothing) as soon as the file is seen to differ from ``version``. The store's check of the
    sha256 catches what a stat cannot (a rewrite that kept size and mtime)."""

    def __init__(self, file: BinaryIO, version: FoundFile, abort: threading.Event) -> None:
        self._file = file
        self._version = version
        self._abort = abort

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        if _changed(self._file, self._version):
            raise FileChanged
        while chunk := self._file.read(CHUNK_SIZE):
            if self._abort.is_set():
                raise Aborted
            size += len(chunk)
            if size > self._version.size:
                raise FileChanged
            yield chunk
        if size != self._version.size or _changed(self._file, self._version):
            raise FileChanged


def _changed(file: BinaryIO, version: FoundFile) -> bool:
    st = os.fstat(file.fileno())
    return (st.st_size, st.st_mtime_ns) != (version.size, version.mtime_ns)


_DONE = object()


class Importer:
    """One run: ``run()`` returns the summary once the scan is done (or, with ``watch``, once
    ``stop`` is set). ``abort`` also cuts in-flight uploads short (they store nothing).

    ``progress`` is called from the importing threads after every change of the counts.
    """

    def __init__(
        self,
        target: Target,
        plan: Plan,
        *,
        progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        self.target = target
        self.plan = plan
        self.stop = stop or threading.Event()
        self.abort = abort or threading.Event()
        self._progress = progress
        self._filter = Filter(plan.patterns)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(plan.workers, 1) * 4)
        self._lock = threading.Lock()
        self._summary = Summary(plan.session_id, plan.source)
        self._known: dict[str, Known] = {}
        self._busy: set[str] = set()
        self._again: dict[str, FoundFile] = {}
        self._watcher: Watcher | None = None

    # -- the run --------------------------------------------------------------------------

    def run(self) -> Summary:
        """Import; EphemeraError (before anything is read) if the session or the follow-up's
        processor cannot be reached."""
        started = time.monotonic()
        self.target.check(self.plan.session_id, self.plan.then)
        self._load_ledger()
        workers = [
            threading.Thread(target=self._work, name=f"import-{i}", daemon=True)
            for i in range(max(self.plan.workers, 1))
        ]
        for worker in workers:
            worker.start()
        try:
            if self.plan.watch:
                # Watching starts before the scan: a file written meanwhile is seen by one or
                # both, and the ledger makes both the same import.
                self._watcher = Watcher(
                    self.plan.root,
                    self._filter,
                    self._enqueue,
                    settle_s=self.plan.settle_s,
                    poll=self.plan.poll,
                )
                self._watcher.start()
            self._scan()
            while self.plan.watch and not self.stop.wait(0.2):
                pass
        finally:
            if self._watcher is not None:
                self._watcher.stop()
            for _ in workers:
                self._queue.put(_DONE)
            for worker in workers:
                while worker.is_alive():
                    worker.join(0.2)
        self._summary.duration_s = round(time.monotonic() - started, 3)
        return self._summary

    def _load_ledger(self) -> None:
        """What the ledger holds of this source; follow-ups a crash left unsubmitted."""
        missing: list[ImportEntry] = []
        for entry in self.target.entries(self.plan.session_id, self.plan.source):
            origin = entry.origin
            self._known[origin.path] = Known(
                origin.size, origin.mtime_ns, entry.artifact_id, entry.task_id
            )
            if self.plan.then is not None and entry.task_id is None:
                missing.append(entry)
        for entry in missing:
            if self.stop.is_set():
                return
            self._follow_up(entry)

    def _follow_up(self, entry: ImportEntry) -> None:
        assert self.plan.then is not None
        try:
            done = self.target.follow_up(self.plan.session_id, entry.artifact_id, self.plan.then)
        except EphemeraError as exc:
            self._fail(entry.origin.path, f"follow-up task not submitted: {exc.message}")
            return
        if done.task_id is not None:
            with self._lock:
                self._summary.tasks.append(done.task_id)

    def _scan(self) -> None:
        settle_ns = int(self.plan.settle_s * 1e9)
        for found in scan(self.plan.root, self._filter, self._fail):
            if self._watcher is not None and time.time_ns() - found.mtime_ns < settle_ns:
                # Written to just now, maybe still being written: imported once it settles.
                self._watcher.retry(found.path)
                continue
            if not self._enqueue(found):
                return

    def _enqueue(self, found: FoundFile) -> bool:
        with self._lock:
            self._summary.found += 1
        self._report()
        while not self.stop.is_set():
            try:
                self._queue.put(found, timeout=0.1)
                return True
            except queue.Full:
                continue
        self._uncount()
        return False

    def _work(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            assert isinstance(item, FoundFile)
            if self.stop.is_set():  # queued, not started: the next run finds it again
                self._uncount()
                continue
            try:
                self._handle(item)
            except Exception as exc:  # a bug costs one file, never the run (or a hang)
                log.exception("importing %s failed", item.path)
                self._fail(item.path, f"unexpected error: {exc!r}")

    def _handle(self, found: FoundFile) -> None:
        """One path at a time: a newer notice of a path being imported waits for it."""
        with self._lock:
            if found.path in self._busy:
                if self._again.pop(found.path, None) is not None:
                    self._summary.found -= 1
                self._again[found.path] = found
                return
            self._busy.add(found.path)
        try:
            while True:
                self._import(found)
                with self._lock:
                    later = self._again.pop(found.path, None)
                    if later is None or self.stop.is_set():
                        if later is not None:
                            self._summary.found -= 1
                        return
                found = later
        finally:
            with self._lock:
                self._busy.discard(found.path)

    # -- one file -------------------------------------------------------------------------

    def _import(self, found: FoundFile) -> None:
        plan = self.plan
        current = stat_file(plan.root, found.path)
        if current is None:
            if plan.watch:  # deleted after it settled: the watcher forgot it too
                self._uncount()
            else:
                self._fail(found.path, "vanished before it was read")
            return
        known = self._known.get(found.path)
        if known is not None and (known.size, known.mtime_ns) == (current.size, current.mtime_ns):
            self._count(skipped=1)
            return
        try:
            file = open(current.absolute, "rb")  # noqa: SIM115 (closed below, after the upload)
        except FileNotFoundError:
            self._fail(found.path, "vanished before it was read")
            return
        except OSError as exc:
            self._fail(found.path, _os_reason(exc))
            return
        origin = ImportOrigin(plan.source, found.path, current.size, current.mtime_ns)
        with file:
            try:
                sha256 = hash_file(file, current, self.abort)
                file.seek(0)
                imported = self.target.put(
                    plan.session_id,
                    UploadReader(file, current, self.abort),
                    origin=origin,
                    name=Path(found.path).name,
                    kind=plan.kind,
                    sha256=sha256,
                    then=plan.then,
                )
            except FileChanged:
                self._changed_while_read(found.path)
                return
            except Aborted:
                self._uncount()
                return
            except ChecksumMismatch as exc:
                # Nothing was stored. Either the file changed between the two reads (then it
                # is not this version) or the bytes were corrupted on their way.
                now = stat_file(plan.root, found.path)
                if now is None or (now.size, now.mtime_ns) != (current.size, current.mtime_ns):
                    self._changed_while_read(found.path)
                else:
                    self._fail(found.path, f"{exc.message}; nothing stored")
                return
            except EphemeraError as exc:
                if isinstance(exc, FATAL):
                    self._fail(found.path, exc.message)
                    self.stop.set()
                    return
                if isinstance(exc, StorageError) and self._watcher is not None:
                    self._watcher.retry(found.path)
                self._fail(found.path, exc.message)
                return
            except OSError as exc:  # reading the file failed part-way
                self._fail(found.path, _os_reason(exc))
                return
        entry = imported.entry
        with self._lock:
            self._known[found.path] = Known(
                current.size, current.mtime_ns, entry.artifact_id, entry.task_id
            )
            if entry.task_id is not None and imported.created:
                self._summary.tasks.append(entry.task_id)
        if imported.created:
            self._count(imported=1, size=current.size)
        else:  # another importer got there first
            self._count(skipped=1)

    def _changed_while_read(self, path: str) -> None:
        if self._watcher is not None:
            self._uncount()
            self._watcher.retry(path)
        else:
            self._fail(path, "changed while it was read; not imported")

    # -- counting -------------------------------------------------------------------------

    def _count(self, *, imported: int = 0, skipped: int = 0, size: int = 0) -> None:
        with self._lock:
            self._summary.imported += imported
            self._summary.skipped += skipped
            self._summary.bytes += size
        self._report()

    def _uncount(self) -> None:
        """A file that was counted as found and will be found again (or never was)."""
        with self._lock:
            self._summary.found -= 1
        self._report()

    def _fail(self, path: str, error: str) -> None:
        with self._lock:
            self._summary.failed += 1
            # A long watch through a server outage fails the same files again and again:
            # the count goes on, the list stops growing.
            if len(self._summary.errors) < MAX_ERRORS_LISTED:
                self._summary.errors.append(FileError(path, error))
        self._report()

    def _report(self) -> None:
        if self._progress is None:
            return
        with self._lock:
            s = self._summary
            snapshot = Progress(s.found, s.imported, s.skipped, s.failed, s.bytes)
        self._progress(snapshot)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
