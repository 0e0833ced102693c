"""The ``orphaned`` pass: what a crash or a lost race left behind.

Staging leftovers, pending records of uploads that died, stored bytes without a record,
``deleting`` records whose delete was interrupted, and (asked for) ready records whose bytes
are lost. Everything younger than the orphan grace period is an upload still in flight.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from datetime import datetime, timedelta

from ephemera.blobs import BlobStat, BlobStore, artifact_key, session_prefix
from ephemera.blobs.resumable import ResumableBlobs
from ephemera.catalog import Candidate
from ephemera.catalog.orphans import RecordedIds
from ephemera.cleanup.records import CleanupItem, CleanupReport, ItemKind, Rule
from ephemera.cleanup.run import Run, delete_marked
from ephemera.errors import EphemeraError
from ephemera.ids import SESSION_ID_RE
from ephemera.models import ArtifactState

# Sessions whose records one query reads on a full walk.
RECONCILE_CHUNK = 256
# A slice's guess of the artifacts per session for its first query, before it knows better.
FIRST_GUESS = 64
# The cleanup cursor of the scheduled lap: the last session name reconciled, "" between laps.
LAP_CURSOR = "orphans"


def orphaned(run: Run, report: CleanupReport) -> None:
    cutoff = run.now - timedelta(seconds=run.context.settings.orphan_grace_s)
    _staged(run, report, cutoff)
    _stale_pending(run, report, cutoff)
    if run.request.incremental:
        _reconcile_slice(run, report, cutoff)
    else:
        _Walk(run, report, cutoff).walk(None)
    if not run.dry_run:
        # Expired lease rows protect nothing, expired Idempotency-Keys answer nothing, events
        # past their retention serve no reconnect: bookkeeping, not data, so not reported.
        catalog = run.context.catalog
        catalog.purge_expired_leases(run.now)
        catalog.prune_keys(run.now)
        catalog.prune_events(run.now - timedelta(seconds=run.context.settings.event_retention_s))


def _staged(run: Run, report: CleanupReport, cutoff: datetime) -> None:
    blobs = run.context.blobs
    resumable = blobs if isinstance(blobs, ResumableBlobs) else None
    for staged in blobs.list_staged():
        if staged.modified_at >= cutoff:
            continue  # an upload still in flight
        upload_id = resumable.upload_of_staged(staged.name) if resumable else None
        if upload_id is not None and run.context.catalog.live_upload_ids([upload_id]):
            continue  # a resumable upload's pieces: they live as long as its record
        if not run.dry_run:
            try:
                blobs.delete_staged(staged.name)
            except EphemeraError as exc:
                report.error(f"staged {staged.name}", exc.message)
                continue
        report.add(
            CleanupItem(ItemKind.STAGED, staged.name, None, staged.size, Rule.STAGING_LEFTOVER)
        )


def _stale_pending(run: Run, report: CleanupReport, cutoff: datetime) -> None:
    catalog = run.context.catalog
    after: tuple[datetime, str] | None = None
    while batch := catalog.stale_pending(cutoff, after, run.batch_size):
        after = (batch[-1].order_key, batch[-1].id)
        # An open resumable upload's attempt at completing: its retry commits it (on S3 its
        # bytes at the key are the only copy); they go with the upload.
        uploads = catalog.live_upload_ids([c.id for c in batch])
        batch = [c for c in batch if not run.ledger.gone(c) and c.id not in uploads]
        if run.dry_run:
            for c in batch:
                report.add(CleanupItem(ItemKind.PENDING, c.id, c.session_id, 0, Rule.STALE_PENDING))
            continue
        gone = []
        for c in batch:
            try:
                # An upload that died between its commit and its record keeps its bytes.
                run.context.blobs.delete(artifact_key(c.session_id, c.id))
                gone.append(c.id)
            except EphemeraError as exc:
                report.error(f"artifact {c.id}", exc.message)
        owners = {c.id: c.session_id for c in batch}
        for artifact_id in catalog.drop_pending(gone, cutoff):
            report.add(
                CleanupItem(
                    ItemKind.PENDING, artifact_id, owners[artifact_id], 0, Rule.STALE_PENDING
                )
            )
        run.progress(report.operation, len(batch))


def _reconcile_slice(run: Run, report: CleanupReport, cutoff: datetime) -> None:
    """The scheduler's share of reconciliation: the next slice of the lap, if one is due.

    A lap walks every session name in order from a cursor kept in the database, one slice
    per tick. A slice takes sessions until it has compared ``orphan_slice_artifacts``
    artifacts (a session counts its records or its stored names, whichever are more) or
    visited ``orphan_slice_sessions`` sessions, whichever comes first, and at least one
    session: so a tick costs the same however large the store is. When the lap wraps, the
    next one starts ``orphan_interval_s`` later. An orphan older than the grace period when a
    lap starts is removed by its end. A dry slice reads the cursor but leaves it where it is.
    """
    settings = run.context.settings
    catalog = run.context.catalog
    saved = catalog.cleanup_cursor(LAP_CURSOR)
    after = saved.position or None if saved is not None else None
    if saved is not None and after is None:
        due = saved.updated_at + timedelta(seconds=settings.orphan_interval_s)
        if run.now < due:
            report.slice = {"sessions": 0, "next_lap_at": due.isoformat()}
            return
    walk = _Walk(
        run,
        report,
        cutoff,
        max_sessions=settings.orphan_slice_sessions,
        max_artifacts=settings.orphan_slice_artifacts,
    )
    lap_done = walk.walk(after)
    report.slice = {
        "after": after,
        "through": walk.last,
        "sessions": walk.sessions,
        "artifacts": walk.artifacts,
        "lap_done": lap_done,
    }
    if not run.dry_run:
        catalog.save_cleanup_cursor(LAP_CURSOR, "" if lap_done else (walk.last or ""), run.now)


class _Visit(enum.Enum):
    SKIP = "skip"  # closed by an earlier pass of this (dry) run
    TREE = "tree"  # stored bytes of a session without a record
    RECORDS = "records"  # compare its stored names with its records


class _Walk:
    """Merge the stored sessions with the recorded ones, then each session's contents.

    Both sides come in ID order, a batch at a time, so memory stays flat however large the
    store is and the database is read through its indexes. A bounded walk (a slice) stops
    after the session that reaches ``max_sessions`` sessions or ``max_artifacts`` artifacts.
    """

    def __init__(
        self,
        run: Run,
        report: CleanupReport,
        cutoff: datetime,
        *,
        max_sessions: int | None = None,
        max_artifacts: int | None = None,
    ) -> None:
        self.run = run
        self.report = report
        self.cutoff = cutoff
        self.max_sessions = max_sessions
        self.max_artifacts = max_artifacts
        self.last: str | None = None  # the last session visited
        self.sessions = 0  # visited
        self.artifacts = 0  # compared
        self._bounded = max_sessions is not None or max_artifacts is not None

    def walk(self, after: str | None) -> bool:
        """Visit the session names after ``after`` up to the bound; whether that was the end."""
        run = self.run
        listed = run.context.blobs.list_children("sessions/", after=after)
        # A slice reads the recorded IDs a page of a chunk's size at a time: it needs few.
        page = RECONCILE_CHUNK if self._bounded else run.batch_size * 4
        merged = _merge(listed, _recorded_sessions(run, after, page))
        chunk: list[tuple[str, bool, _Visit]] = []
        for session_id, on_disk, in_db in merged:
            chunk.append((session_id, on_disk, self._classify(session_id, on_disk, in_db)))
            if len(chunk) < self._chunk_size():
                continue
            if not self._visit(chunk):
                return False
            if self._bound_reached():
                return next(merged, None) is None
            chunk = []
        return self._visit(chunk)

    def _classify(self, session_id: str, on_disk: bool, in_db: bool) -> _Visit:
        if session_id in self.run.ledger.sessions:
            return _Visit.SKIP
        valid = SESSION_ID_RE.fullmatch(session_id) is not None
        if valid and on_disk and not in_db and _recorded(self.run, session_id):
            in_db = True  # the merge missed its record: live bytes, never an orphan tree
        if not valid or (on_disk and not in_db):
            return _Visit.TREE
        return _Visit.RECORDS

    def _chunk_size(self) -> int:
        """Sessions to read the records of in one query: a full walk reads RECONCILE_CHUNK;
        a slice as many as its artifacts left are likely to cover, by the mean so far."""
        size = RECONCILE_CHUNK
        if self.max_artifacts is not None:
            left = self.max_artifacts - self.artifacts
            per_session = self.artifacts / self.sessions if self.sessions else FIRST_GUESS
            size = min(size, max(1, math.ceil(left / max(per_session, 1.0))))
        if self.max_sessions is not None:
            size = min(size, max(1, self.max_sessions - self.sessions))
        return size

    def _bound_reached(self) -> bool:
        return (self.max_sessions is not None and self.sessions >= self.max_sessions) or (
            self.max_artifacts is not None and self.artifacts >= self.max_artifacts
        )

    def _visit(self, chunk: list[tuple[str, bool, _Visit]]) -> bool:
        """Reconcile the chunk's sessions in order: one query for the records of them all,
        then one listing per session. False if the bound stopped it before the chunk's end.
        """
        run = self.run
        wanted = [sid for sid, _, visit in chunk if visit is _Visit.RECORDS]
        recorded = run.context.catalog.recorded_ids(wanted) if wanted else {}
        done = 0
        for session_id, on_disk, visit in chunk:
            if visit is _Visit.RECORDS:
                cost = self._compare(session_id, on_disk, recorded[session_id])
            elif visit is _Visit.TREE:
                cost = _orphan_tree(run, self.report, session_id, self.cutoff)
            else:
                cost = 0
            self.last = session_id
            self.sessions += 1
            self.artifacts += max(cost, 1)
            done += 1
            if self._bound_reached():
                break
        run.progress(self.report.operation, done)
        return done == len(chunk)

    def _compare(self, session_id: str, on_disk: bool, records: RecordedIds) -> int:
        """One session's stored names against its records; how many artifacts that compared.

        A consistent session (its sorted names equal its record IDs, all ready) costs a
        string comparison; only the others are compared as sets, and only names without a
        record are stat-ed.
        """
        run = self.run
        prefix = session_prefix(session_id)
        try:
            # Records but no folder in the listing: look anyway before calling their bytes
            # lost (one listing, only where something already looks wrong).
            names = (
                list(run.context.blobs.list_children(prefix)) if on_disk or records.count else []
            )
        except EphemeraError as exc:
            self.report.error(f"list {prefix}", exc.message)
            return records.count
        if not records.unready and records.matches(names):
            return len(names)
        states = dict.fromkeys(records.ids, ArtifactState.READY.value) | records.unready
        _reconcile_session(run, self.report, session_id, self.cutoff, set(names), states)
        return max(len(names), records.count)


def _recorded_sessions(run: Run, after: str | None, page: int) -> Iterator[str]:
    while batch := run.context.catalog.session_ids(after, page):
        yield from batch
        after = batch[-1]


def _recorded(run: Run, session_id: str) -> bool:
    """One point query before a tree is taken for an orphan: trees without a record are rare,
    and a merge that went wrong (the store's order and the database's disagreeing) must not
    cost a live session its bytes."""
    return run.context.catalog.get_session_row(session_id) is not None


def _orphan_tree(run: Run, report: CleanupReport, session_id: str, cutoff: datetime) -> int:
    """Bytes of a session with no record at all: every old one goes. How many it found."""
    blobs = run.context.blobs
    prefix = f"sessions/{session_id}/"
    stats = list(_safe_list(blobs, prefix, report))
    old = [s for s in stats if s.modified_at < cutoff]
    for stat in old:
        report.add(CleanupItem(ItemKind.BLOB, stat.key, session_id, stat.size, Rule.NO_RECORD))
    if run.dry_run or not old:
        return len(stats)
    try:
        if len(old) == len(stats):
            blobs.delete_prefix(prefix)  # one sweep, and no empty folder left behind
        else:
            for stat in old:
                blobs.delete(stat.key)
    except EphemeraError as exc:
        report.error(f"session {session_id}", exc.message)
    return len(stats)


def _reconcile_session(
    run: Run,
    report: CleanupReport,
    session_id: str,
    cutoff: datetime,
    names: set[str],
    records: dict[str, str],
) -> None:
    """Compare one session's stored names with its records (id -> state), as sets."""
    blobs = run.context.blobs
    catalog = run.context.catalog
    prefix = session_prefix(session_id)
    unrecorded = names - records.keys()
    # Bytes an open resumable upload put at its key (a commit that failed): its retry
    # commits them, and they go with the upload.
    unrecorded -= catalog.live_upload_ids(sorted(unrecorded)) if unrecorded else set()
    for name in sorted(unrecorded):
        try:
            stat = blobs.stat(prefix + name)
        except EphemeraError:
            continue  # gone meanwhile, or not a blob: nothing of ours to remove
        if stat.modified_at >= cutoff:
            continue
        if not run.dry_run:
            try:
                blobs.delete(stat.key)
            except EphemeraError as exc:
                report.error(f"blob {stat.key}", exc.message)
                continue
        report.add(CleanupItem(ItemKind.BLOB, stat.key, session_id, stat.size, Rule.NO_RECORD))
    unfinished: list[Candidate] = []
    purged: list[Candidate] = []
    missing = {a for a, s in records.items() if s == ArtifactState.READY and a not in names}
    if missing:
        # Read again: an artifact that a delete (a concurrent cleanup, a close) marked and
        # removed after the first read lost no bytes, and is that delete's to finish. One
        # still ready had its bytes before the listing, so only it really lacks them.
        now = catalog.artifact_states([session_id])[session_id]
        gone = {a for a in missing if now.get(a) != ArtifactState.READY}
        records = {a: s for a, s in records.items() if a not in gone}
    for artifact_id, state in sorted(records.items()):
        if artifact_id in run.ledger.artifacts:
            continue  # removed by an earlier pass of this (dry) run
        if state == ArtifactState.DELETING:
            unfinished.append(_record(artifact_id, session_id, state))
        elif state == ArtifactState.READY and artifact_id not in names:
            report.error(f"artifact {artifact_id}", "integrity: ready record without bytes")
            if run.request.purge_missing and (
                run.dry_run or catalog.mark_missing_deleting(artifact_id)
            ):
                purged.append(_record(artifact_id, session_id, state))
    if run.dry_run:
        # Record sizes count in stored bytes (the quota) until a real run drops them.
        sizes = catalog.artifact_sizes([c.id for c in unfinished + purged])
        for c in unfinished:
            size = sizes.get(c.id, 0)
            report.add(
                CleanupItem(ItemKind.ARTIFACT, c.id, session_id, size, Rule.INTERRUPTED_DELETE)
            )
            run.ledger.remove_artifact(session_id, c.id, size)
        for c in purged:
            report.add(CleanupItem(ItemKind.ARTIFACT, c.id, session_id, 0, Rule.MISSING_BYTES))
            run.ledger.remove_artifact(session_id, c.id, sizes.get(c.id, 0))
    else:
        delete_marked(run, report, unfinished, Rule.INTERRUPTED_DELETE)
        # Their bytes were already gone: purging frees nothing.
        delete_marked(run, report, purged, Rule.MISSING_BYTES, frees_bytes=False)


def _record(artifact_id: str, session_id: str, state: str) -> Candidate:
    """A record reconciliation found: no size yet, and nothing protects it here."""
    return Candidate(
        id=artifact_id,
        session_id=session_id,
        size=0,
        state=ArtifactState(state),
        leased=False,
        retained=False,
    )


def _safe_list(blobs: BlobStore, prefix: str, report: CleanupReport) -> Iterator[BlobStat]:
    try:
        yield from blobs.list(prefix)
    except EphemeraError as exc:
        report.error(f"list {prefix}", exc.message)


def _merge(left: Iterator[str], right: Iterator[str]) -> Iterator[tuple[str, bool, bool]]:
    """Merge two ascending streams of names: (name, in left, in right)."""
    a = next(left, None)
    b = next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a < b):
            assert a is not None
            yield a, True, False
            a = next(left, None)
        elif a is None or b < a:
            yield b, False, True
            b = next(right, None)
        else:
            yield a, True, True
            a, b = next(left, None), next(right, None)
