"""An in-memory import target for the importer's unit tests: the ledger's rules, no store.

It keeps what the real ledger promises: an origin it holds is answered without reading the
data; data is read to its end before anything is recorded, and an exception raised while
reading records nothing; a client sha256 that the bytes received do not match records nothing
(ChecksumMismatch); a new version of a path replaces the previous one's artifact.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ephemera.errors import ChecksumMismatch, NotFound
from ephemera.models import FollowUp, Imported, ImportEntry, ImportOrigin


@dataclass
class FakeTarget:
    session_id: str = "s1"
    processors: tuple[str, ...] = ("sample-upper",)
    entries_: list[ImportEntry] = field(default_factory=list)
    stored: dict[str, bytes] = field(default_factory=dict)
    # Called with the origin before its data is read: a test's way to make one file fail.
    before_read: Callable[[ImportOrigin], None] | None = None
    # Called after the first chunk of a file is read: a test's way to change it mid-read.
    during_read: Callable[[ImportOrigin], None] | None = None
    # Applied to every chunk before it is received: a transport that corrupts bytes.
    in_transit: Callable[[bytes], bytes] | None = None
    puts: int = 0
    reads: int = 0
    follow_ups: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def check(self, session_id: str | None, then: FollowUp | None) -> None:
        if session_id is not None and session_id != self.session_id:
            raise NotFound(f"session {session_id} not found")
        if then is not None and then.processor not in self.processors:
            raise NotFound(f"processor {then.processor} is not enabled")

    def entries(self, session_id: str, source: str) -> Iterator[ImportEntry]:
        with self.lock:
            found = [e for e in self.entries_ if e.origin.source == source]
        return iter(found)

    def put(
        self,
        session_id: str,
        data: Iterable[bytes],
        *,
        origin: ImportOrigin,
        name: str,
        kind: str,
        sha256: str | None,
        then: FollowUp | None,
    ) -> Imported:
        self.check(session_id, then)
        with self.lock:
            self.puts += 1
            for entry in self.entries_:
                if entry.origin == origin:
                    return Imported(entry, created=False)
        if self.before_read is not None:
            self.before_read(origin)
            self.check(session_id, then)
        digest, body = hashlib.sha256(), bytearray()
        with self.lock:
            self.reads += 1
        for i, chunk in enumerate(data):
            if self.in_transit is not None:
                chunk = self.in_transit(chunk)
            digest.update(chunk)
            body += chunk
            if i == 0 and self.during_read is not None:
                self.during_read(origin)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ChecksumMismatch(
                f"the upload's sha256 is {digest.hexdigest()}, the client said {sha256}"
            )
        with self.lock:
            for entry in self.entries_:
                if entry.origin == origin:
                    return Imported(entry, created=False)
            artifact_id = f"a{next(self._ids)}"
            previous = [e for e in self.entries_ if e.origin.path == origin.path]
            task_id = f"t-{artifact_id}" if then is not None else None
            entry = ImportEntry(
                session_id,
                origin,
                artifact_id,
                digest.hexdigest(),
                previous[-1].artifact_id if previous else None,
                datetime.now(UTC),
                task_id,
            )
            self.entries_.append(entry)
            self.stored[artifact_id] = bytes(body)
        return Imported(entry, created=True)

    def follow_up(self, session_id: str, artifact_id: str, then: FollowUp) -> ImportEntry:
        with self.lock:
            self.follow_ups += 1
            for i, entry in enumerate(self.entries_):
                if entry.artifact_id == artifact_id:
                    if entry.task_id is None:
                        entry = ImportEntry(
                            entry.session_id,
                            entry.origin,
                            entry.artifact_id,
                            entry.sha256,
                            entry.replaces,
                            entry.imported_at,
                            f"t-{artifact_id}",
                        )
                        self.entries_[i] = entry
                    return entry
        raise NotFound(f"no import entry for artifact {artifact_id}")

    def by_path(self) -> dict[str, list[ImportEntry]]:
        out: dict[str, list[ImportEntry]] = {}
        for entry in self.entries_:
            out.setdefault(entry.origin.path, []).append(entry)
        return out
