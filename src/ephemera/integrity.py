"""Verification: re-hash stored bytes, flag what is missing or corrupt, optionally drop it.

A run reads each selected ready artifact as a stream (at most ``rate_mb_s``), compares size
and sha256 with the record, and writes its findings a batch at a time: bytes that hash right
get ``verified_at`` (and lose any flag: restored from a backup); wrong or absent bytes get
``integrity`` = ``corrupt`` / ``missing``, which every read path refuses from then on, so a
corrupt artifact is never served under its recorded ETag.

Repair is explicit. ``flag`` (the default) keeps the record, flagged, for someone to restore
the bytes or delete it. ``drop`` removes flagged artifacts through the delete path (mark
deleting, remove bytes, drop the record, hooks fire); an artifact a valid lease protects is
kept flagged instead, since guarantee 5 lets nothing delete what a lease names, and the
lease holder gets a clear error rather than a vanished input.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from ephemera import ids
from ephemera.blobs import artifact_key
from ephemera.errors import (
    ArtifactCorrupt,
    BlobNotFound,
    Conflict,
    EphemeraError,
    InvalidInput,
    NotFound,
)

if TYPE_CHECKING:
    from ephemera.catalog import Stored
    from ephemera.context import Context
    from ephemera.models import Artifact

log = logging.getLogger("ephemera.integrity")

BATCH = 200
CHUNK = 1024 * 1024
MAX_RATE_MB_S = 1_000_000.0
# Problems listed by name in a report; the counts are always exact.
MAX_LISTED = 1000
# A run gives up after this many unreadable (not missing) artifacts.
MAX_READ_ERRORS = 100
MB = 1_000_000


class Integrity(StrEnum):
    CORRUPT = "corrupt"
    MISSING = "missing"


class Repair(StrEnum):
    FLAG = "flag"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    done_count: int
    done_bytes: int
    total_count: int
    total_bytes: int


ProgressFn = Callable[[VerifyProgress], None]


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    session_id: str | None = None
    rate_mb_s: float | None = None
    repair: Repair = Repair.FLAG
    # Scrub: only unflagged artifacts not verified since then, least recently verified first.
    due_before: datetime | None = None

    @classmethod
    def checked(
        cls, session_id: str | None, rate_mb_s: float | None, repair: Repair | str
    ) -> VerifyRequest:
        if session_id is not None and not ids.SESSION_ID_RE.fullmatch(session_id):
            raise InvalidInput(f"invalid session ID {session_id[:70]!r}")
        if rate_mb_s is not None and not (
            math.isfinite(rate_mb_s) and 0 < rate_mb_s <= MAX_RATE_MB_S
        ):
            raise InvalidInput(
                f"rate must be a number of MB/s above 0 and at most {MAX_RATE_MB_S:g}"
            )
        try:
            mode = Repair(repair)
        except ValueError:
            raise InvalidInput("repair must be 'flag' or 'drop'") from None
        return cls(session_id, rate_mb_s, mode)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"rate_mb_s": self.rate_mb_s, "repair": self.repair.value}
        if self.session_id is not None:
            params["session_id"] = self.session_id
        if self.due_before is not None:
            params["due_before"] = self.due_before.isoformat()
        return params


@dataclass(frozen=True, slots=True)
class Problem:
    session_id: str
    artifact_id: str
    name: str
    integrity: Integrity
    error: str
    dropped: bool = False


@dataclass(slots=True)
class VerifyReport:
    checked_count: int = 0
    checked_bytes: int = 0
    missing_count: int = 0
    corrupt_count: int = 0
    restored_count: int = 0
    repaired_count: int = 0
    skipped_protected: int = 0
    problems: list[Problem] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.missing_count == 0 and self.corrupt_count == 0 and not self.errors

    def totals(self) -> dict[str, Any]:
        return {
            "checked_count": self.checked_count,
            "checked_bytes": self.checked_bytes,
            "missing_count": self.missing_count,
            "corrupt_count": self.corrupt_count,
            "restored_count": self.restored_count,
            "repaired_count": self.repaired_count,
            "skipped_protected": self.skipped_protected,
            "errors": len(self.errors),
            "interrupted": self.interrupted,
            "duration_s": self.duration_s,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.totals(),
            "errors": self.errors[:MAX_LISTED],
            "problems": [
                {
                    "session_id": p.session_id,
                    "artifact_id": p.artifact_id,
                    "name": p.name,
                    "integrity": p.integrity.value,
                    "error": p.error,
                    "dropped": p.dropped,
                }
                for p in self.problems
            ],
        }


def refuse_flagged(artifact: Artifact) -> None:
    """ArtifactCorrupt for an artifact verification found wrong: never serve its bytes."""
    if artifact.integrity is not None:
        raise _corrupt(artifact.id, artifact.integrity, artifact.integrity_error or "")


def _corrupt(artifact_id: str, integrity: str, error: str) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"artifact {artifact_id} failed verification: its stored bytes are {integrity}"
        f" ({error}); restore them and verify again, or delete it"
    )


def verified_chunks(
    context: Context,
    artifact: Artifact,
    chunk_size: int = CHUNK,
    *,
    on_flagged: Callable[[Integrity], object] | None = None,
) -> Iterator[bytes]:
    """The artifact's bytes, hashed on the way; the last chunk is held back until the whole
    body hashed right. On a mismatch the artifact is flagged and ArtifactCorrupt raised
    instead of the last chunk, so a reader never receives the complete wrong body.

    Opens the bytes at once (missing ones are flagged and refused before anything is sent).
    """
    refuse_flagged(artifact)
    flag = _Flagger(context, artifact, on_flagged)
    try:
        stream = context.blobs.open(artifact_key(artifact.session_id, artifact.id))
    except BlobNotFound:
        flag(Integrity.MISSING, "no stored bytes")
    return _hashed(flag, artifact, stream, chunk_size)


def _hashed(
    flag: _Flagger, artifact: Artifact, stream: BinaryIO, chunk_size: int
) -> Iterator[bytes]:
    digest = hashlib.sha256()
    size = 0
    held = b""
    with stream:
        while chunk := stream.read(chunk_size):
            if held:
                yield held
            digest.update(chunk)
            size += len(chunk)
            held = chunk
    if size != artifact.size:
        why = f"{size} bytes stored, {artifact.size} recorded"
        flag(Integrity.CORRUPT, why)
    if digest.hexdigest() != artifact.sha256:
        why = f"sha256 {digest.hexdigest()}, {artifact.sha256} recorded"
        flag(Integrity.CORRUPT, why)
    if held:
        yield held


@dataclass(frozen=True, slots=True)
class _Flagger:
    """Flags the artifact being served as wrong, and refuses it."""

    context: Context
    artifact: Artifact
    on_flagged: Callable[[Integrity], object] | None

    def __call__(self, kind: Integrity, why: str) -> NoReturn:
        artifact = self.artifact
        flagged = self.context.catalog.flag_artifacts([(artifact.id, kind.value, why)])
        if not flagged:  # deleted while it was read: simply gone
            raise NotFound(f"artifact {artifact.id} not found")
        log.warning(
            "artifact %s/%s (%s) is %s, found while serving it: %s",
            artifact.session_id,
            artifact.id,
            artifact.name,
            kind.value,
            why,
            extra={"action": "verify"},
        )
        if self.on_flagged is not None:
            self.on_flagged(kind)
        raise _corrupt(artifact.id, kind.value, why)


class _Pacer:
    """Sleeps so that reading never runs ahead of ``rate`` bytes a second."""

    def __init__(self, rate_mb_s: float | None, stop: threading.Event | None) -> None:
        self.rate = rate_mb_s * MB if rate_mb_s else None
        self.stop = stop
        self.started = time.monotonic()
        self.read = 0

    def account(self, size: int) -> None:
        self.read += size
        if self.rate is None:
            return
        ahead = self.read / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            if self.stop is not None:
                self.stop.wait(ahead)
            else:
                time.sleep(ahead)


class _Stopped(Exception):
    pass


class _Verifier:
    """One run's state: the report so far, the pace, the progress totals."""

    def __init__(
        self,
        context: Context,
        request: VerifyRequest,
        *,
        progress: ProgressFn | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.context = context
        self.request = request
        self.progress = progress
        self.stop = stop
        self.report = VerifyReport()
        self._pacer = _Pacer(request.rate_mb_s, stop)
        self._totals = (0, 0)
        self._done = (0, 0)

    def run(self) -> VerifyReport:
        started = time.perf_counter()
        request = self.request
        self._totals = self.context.catalog.verify_totals(request.session_id, request.due_before)
        try:
            if request.due_before is not None:
                self._scrub(request.due_before)
            else:
                self._all()
        except _Stopped:
            self.report.interrupted = True
        self.report.duration_s = round(time.perf_counter() - started, 6)
        return self.report

    def _all(self) -> None:
        after: str | None = None
        while batch := self.context.catalog.verify_batch(self.request.session_id, after, BATCH):
            self._check(batch)
            after = batch[-1].id

    def _scrub(self, due_before: datetime) -> None:
        unreadable: list[str] = []
        previous: list[str] = []
        while batch := self.context.catalog.scrub_batch(due_before, unreadable, BATCH):
            # Each batch leaves the selection (verified or flagged); one that would not must
            # not spin the scrub.
            if [item.id for item in batch] == previous:
                log.warning("scrub made no progress; stopping this run", extra={"action": "verify"})
                return
            previous = [item.id for item in batch]
            before = len(self.report.errors)
            self._check(batch)
            unreadable += [e["artifact_id"] for e in self.report.errors[before:]]

    def _check(self, batch: list[Stored]) -> None:
        good: list[Stored] = []
        bad: list[tuple[Stored, Integrity, str]] = []
        try:
            for item in batch:
                if self.stop is not None and self.stop.is_set():
                    raise _Stopped
                if len(self.report.errors) >= MAX_READ_ERRORS:
                    # The blob store is failing, not the bytes: stop rather than list them all.
                    log.warning("verify stopped after %d unreadable artifacts", MAX_READ_ERRORS)
                    raise _Stopped
                found = self._hash(item)
                if found is None:
                    good.append(item)
                elif isinstance(found, tuple):
                    bad.append((item, *found))
        finally:
            # What this batch learnt is kept even when the run stops half-way through it.
            self._record(good, bad)

    def _hash(self, item: Stored) -> tuple[Integrity, str] | str | None:
        """None: right; (integrity, why): wrong; a string: unreadable for another reason."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self.context.blobs.open(artifact_key(item.session_id, item.id)) as stream:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    self._pacer.account(len(chunk))
                    self._advance(0, len(chunk))
                    if self.stop is not None and self.stop.is_set():
                        raise _Stopped
        except BlobNotFound:
            return Integrity.MISSING, "no stored bytes"
        except EphemeraError as exc:
            self.report.errors.append({"artifact_id": item.id, "error": exc.message})
            return exc.message
        finally:
            self.report.checked_count += 1
            self.report.checked_bytes += size
            self._advance(1, 0)
        if size != item.size:
            return Integrity.CORRUPT, f"{size} bytes stored, {item.size} recorded"
        if digest.hexdigest() != item.sha256:
            return Integrity.CORRUPT, f"sha256 {digest.hexdigest()}, {item.sha256} recorded"
        return None

    def _advance(self, count: int, size: int) -> None:
        self._done = (self._done[0] + count, self._done[1] + size)
        if self.progress is not None:
            self.progress(VerifyProgress(*self._done, *self._totals))

    def _record(self, good: list[Stored], bad: list[tuple[Stored, Integrity, str]]) -> None:
        catalog = self.context.catalog
        if good:
            catalog.mark_verified([item.id for item in good], self.context.clock.now())
            self.report.restored_count += sum(1 for item in good if item.integrity is not None)
        if not bad:
            return
        flagged = catalog.flag_artifacts([(item.id, kind.value, why) for item, kind, why in bad])
        # An artifact deleted while it was read is simply gone, not missing.
        found = [(item, kind, why) for item, kind, why in bad if item.id in flagged]
        dropped: set[str] = set()
        if self.request.repair == Repair.DROP:
            dropped = self._drop([item for item, _, _ in found])
        for item, kind, why in found:
            if kind == Integrity.MISSING:
                self.report.missing_count += 1
            else:
                self.report.corrupt_count += 1
            log.warning(
                "artifact %s/%s (%s) is %s: %s",
                item.session_id,
                item.id,
                item.name,
                kind.value,
                why,
                extra={"action": "verify"},
            )
            if len(self.report.problems) < MAX_LISTED:
                self.report.problems.append(
                    Problem(item.session_id, item.id, item.name, kind, why, item.id in dropped)
                )

    def _drop(self, items: list[Stored]) -> set[str]:
        catalog = self.context.catalog
        now = self.context.clock.now()
        marked: list[tuple[str, str]] = []
        for item in items:
            try:
                if catalog.mark_artifact_deleting(item.session_id, item.id, now) is not None:
                    marked.append((item.session_id, item.id))
            except Conflict:
                self.report.skipped_protected += 1
        # Imported here: the `verify` command's flags need this module, not the delete path.
        from ephemera.removal import remove_artifacts

        removal = remove_artifacts(self.context, marked, "verify", self.context.clock.now())
        for artifact_id, error in removal.failed.items():
            self.report.errors.append({"artifact_id": artifact_id, "error": error})
        self.report.repaired_count += len(removal.removed)
        return {item.artifact_id for item in removal.removed}


def run_verify(
    context: Context,
    request: VerifyRequest,
    *,
    actor: str = "library",
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> VerifyReport:
    """Verify, record the run in the audit log, and return its report."""
    catalog = context.catalog
    if request.session_id is not None and catalog.get_session_row(request.session_id) is None:
        raise NotFound(f"session {request.session_id} not found")
    report = _Verifier(context, request, progress=progress, stop=stop).run()
    params = request.params()
    totals = report.totals()
    catalog.insert_audit(context.clock.now(), actor, "verify", request.session_id, params, totals)
    log.info(
        "verify by %s: %d checked, %d bytes, %d missing, %d corrupt, %d dropped in %.3f s",
        actor,
        report.checked_count,
        report.checked_bytes,
        report.missing_count,
        report.corrupt_count,
        report.repaired_count,
        report.duration_s,
        extra={"action": "verify"},
    )
    return report
