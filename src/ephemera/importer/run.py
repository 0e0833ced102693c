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
can no longer be reached ends it. A busy server (Unavailable: 429, a brief 5xx) costs a pause
and another try; when watching, a file that still fails is tried again once it settles, and
its success then takes the failure back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
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
    Unavailable,
)
from ephemera.importer.scan import Filter, FoundFile, scan, stat_file
from ephemera.importer.targets import Target
from ephemera.importer.watch import Watcher
from ephemera.models import FollowUp, ImportOrigin

log = logging.getLogger("ephemera.importer")

CHUNK_SIZE = 1024 * 1024
MAX_ERRORS_LISTED = 10_000
# Errors after which no other file can succeed either: the run stops.
FATAL = (NotFound, Unauthenticated, Forbidden)
# A busy server (429, a brief 5xx): a file is tried this many times, pausing as the server asks
# (or doubling from BACKOFF_S), before it counts as failed. Attempts made while another upload
# of this run is in flight do not count: that upload frees a slot when it ends.
ATTEMPTS = 6
BACKOFF_S = 0.25
MAX_BACKOFF_S = 8.0


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
    """The latest ledger entry of a path (its task, to submit a follow-up a crash missed)."""

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
        # Failures a later attempt may take back (watch mode: retried when the file settles).
        self._retried: dict[str, FileError] = {}
        self._uploading = 0
        self._workers: list[threading.Thread] = []
        self._watcher: Watcher | None = None

    # -- the run --------------------------------------------------------------------------

    def run(self) -> Summary:
        """Import; EphemeraError (before anything is read) if the session or the follow-up's
        processor cannot be reached."""
        started = time.monotonic()
        self.target.check(self.plan.session_id, self.plan.then)
        self._load_ledger()
        workers = self._workers = [
            threading.Thread(target=self._work, name=f"import-{i}", daemon=True)
            for i in range(max(self.plan.workers, 1))
        ]
        for worker in workers:
            worker.start()
        try:
            if self.plan.watch:
                # Watching starts before the scan: a file written meanwhile is seen by one or
                # both, and the ledger makes both the same import.
                watcher = Watcher(
                    self.plan.root,
                    self._filter,
                    self._enqueue,
                    settle_s=self.plan.settle_s,
                    poll=self.plan.poll,
                )
                watcher.start()  # OSError (e.g. the inotify watch limit): nothing to stop
                self._watcher = watcher
            self._scan()
            while self.plan.watch and not self.stop.wait(0.2):
                pass
        finally:
            if self._watcher is not None:
                self._watcher.stop()
            for _ in workers:
                self._put_while_working(_DONE)
            for worker in workers:
                while worker.is_alive():
                    worker.join(0.2)
        self._summary.duration_s = round(time.monotonic() - started, 3)
        return self._summary

    def _load_ledger(self) -> None:
        """What the ledger holds of this source; follow-ups a crash left unsubmitted."""
        for entry in self.target.entries(self.plan.session_id, self.plan.source):
            origin = entry.origin  # oldest first: a path's latest version stays
            self._known[origin.path] = Known(
                origin.size, origin.mtime_ns, entry.artifact_id, entry.task_id
            )
        if self.plan.then is None:
            return
        # Only the latest version of each path: a superseded one needs no task any more.
        missing = [(p, k.artifact_id) for p, k in self._known.items() if k.task_id is None]
        for path, artifact_id in missing:
            if self.stop.is_set():
                return
            self._follow_up(path, artifact_id)

    def _follow_up(self, path: str, artifact_id: str) -> None:
        assert self.plan.then is not None
        try:
            done = self.target.follow_up(self.plan.session_id, artifact_id, self.plan.then)
        except EphemeraError as exc:
            self._fail(path, f"follow-up task not submitted: {exc.message}")
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
        if self._put_while_working(found, until=self.stop):
            return True
        self._uncount()
        return False

    def _put_while_working(self, item: object, until: threading.Event | None = None) -> bool:
        """Queue ``item``; False once ``until`` is set or no worker is left to take it (a
        worker that died must not hang the run)."""
        while until is None or not until.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                if not any(w.is_alive() for w in self._workers):
                    log.error("every import thread has ended; stopping")
                    self.stop.set()
                    return False
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
                try:
                    self._fail(item.path, f"unexpected error: {exc!r}")
                except Exception:  # not even that: the thread lives on for the next file
                    log.exception("recording the failure of %s failed", item.path)

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
                self._attempt(found)
                with self._lock:
                    later = self._again.pop(found.path, None)
                    if later is None or self.stop.is_set():
                        if later is not None:
                            self._summary.found -= 1
                        # In the same locked block that found no newer notice: one arriving
                        # after it sees the path free and is imported by its own thread.
                        self._busy.discard(found.path)
                        return
                found = later
        except BaseException:
            with self._lock:
                self._busy.discard(found.path)
                later = self._again.pop(found.path, None)
                if later is not None:
                    self._summary.found -= 1
            if later is not None and self._watcher is not None:
                self._watcher.retry(found.path)
            raise

    def _attempt(self, found: FoundFile) -> None:
        """Import ``found``, again after a pause while the server is busy (a bounded number
        of times, not counting those while another upload of this run holds a slot)."""
        attempts = 0
        while True:
            try:
                self._import(found)
                return
            except Unavailable as exc:
                with self._lock:
                    others = self._uploading > 0
                attempts += 0 if others else 1
                if attempts >= ATTEMPTS:
                    self._retry_later(found.path, exc.message)
                    return
                pause = exc.retry_after_s
                if pause is None:
                    pause = BACKOFF_S * 2**attempts
                # Spread out: the threads refused together should not all come back together.
                pause = min(pause, MAX_BACKOFF_S) * random.uniform(1.0, 1.5)  # noqa: S311
                if self.stop.wait(pause):  # not imported: the next run finds it again
                    self._uncount()
                    return

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
        with self._lock:
            known = self._known.get(found.path)
        if known is not None and (known.size, known.mtime_ns) == (current.size, current.mtime_ns):
            self._count(found.path, skipped=1)
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
                with self._lock:
                    self._uploading += 1
                try:
                    imported = self.target.put(
                        plan.session_id,
                        UploadReader(file, current, self.abort),
                        origin=origin,
                        name=Path(found.path).name,
                        kind=plan.kind,
                        sha256=sha256,
                        then=plan.then,
                    )
                finally:
                    with self._lock:
                        self._uploading -= 1
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
            except Unavailable:
                raise  # paused and tried again by _attempt
            except EphemeraError as exc:
                if isinstance(exc, FATAL):
                    self._fail(found.path, exc.message)
                    self.stop.set()
                    return
                if isinstance(exc, StorageError):
                    self._retry_later(found.path, exc.message)
                else:
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
            self._count(found.path, imported=1, size=current.size)
        else:  # another importer got there first
            self._count(found.path, skipped=1)

    def _changed_while_read(self, path: str) -> None:
        if self._watcher is not None:
            self._uncount()
            self._watcher.retry(path)
        else:
            self._fail(path, "changed while it was read; not imported")

    # -- counting -------------------------------------------------------------------------

    def _retry_later(self, path: str, error: str) -> None:
        """A failure the file may get over: when watching, it is tried again once it settles
        and a success then takes the failure back (a healthy watch ends with none)."""
        if self._watcher is None:
            self._fail(path, error)
            return
        problem = FileError(path, error)
        with self._lock:
            self._take_back(path)  # failed again: one failure per path, the latest message
            self._retried[path] = problem
        self._fail(path, error)
        self._watcher.retry(path)

    def _count(self, path: str, *, imported: int = 0, skipped: int = 0, size: int = 0) -> None:
        with self._lock:
            self._summary.imported += imported
            self._summary.skipped += skipped
            self._summary.bytes += size
            self._take_back(path)
        self._report()

    def _take_back(self, path: str) -> None:
        """Under the lock: the earlier failure of ``path`` no longer counts, nor does its
        earlier finding (it was found again for this attempt)."""
        taken = self._retried.pop(path, None)
        if taken is None:
            return
        self._summary.failed -= 1
        self._summary.found -= 1
        if taken in self._summary.errors:
            self._summary.errors.remove(taken)

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
        try:
            self._progress(snapshot)
        except Exception:  # a progress display that fails must not end an import thread
            log.exception("reporting progress failed")


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
