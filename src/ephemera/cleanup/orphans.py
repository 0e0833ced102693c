"""The ``orphaned`` pass: what a crash or a lost race left behind.

Staging leftovers, pending records of uploads that died, stored bytes without a record,
``deleting`` records whose delete was interrupted, and (asked for) ready records whose bytes
are lost. Everything younger than the orphan grace period is an upload still in flight.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta

from ephemera.blobs import BlobStat, BlobStore, artifact_key, session_prefix
from ephemera.blobs.resumable import ResumableBlobs
from ephemera.catalog import Candidate
from ephemera.cleanup.records import CleanupItem, CleanupReport, ItemKind, Rule
from ephemera.cleanup.run import Run, delete_marked
from ephemera.errors import EphemeraError
from ephemera.ids import SESSION_ID_RE
from ephemera.models import ArtifactState

# Sessions whose records one query reads.
RECONCILE_CHUNK = 256
# The cleanup cursor of the scheduled lap: the last session name reconciled, "" between laps.
LAP_CURSOR = "orphans"


def orphaned(run: Run, report: CleanupReport) -> None:
    cutoff = run.now - timedelta(seconds=run.context.settings.orphan_grace_s)
    _staged(run, report, cutoff)
    _stale_pending(run, report, cutoff)
    if run.request.incremental:
        _reconcile_slice(run, report, cutoff)
    else:
        _reconcile(run, report, cutoff)
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

    A lap walks every session name in order, ``orphan_slice_sessions`` per tick, from a
    cursor kept in the database; when it wraps, the next lap starts ``orphan_interval_s``
    later. An orphan older than the grace period when a lap starts is removed by its end.
    A dry slice reads the cursor but leaves it where it is.
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
    last, visited, lap_done = _reconcile(
        run, report, cutoff, after=after, limit=settings.orphan_slice_sessions
    )
    report.slice = {"after": after, "through": last, "sessions": visited, "lap_done": lap_done}
    if not run.dry_run:
        catalog.save_cleanup_cursor(LAP_CURSOR, "" if lap_done else (last or ""), run.now)


def _reconcile(
    run: Run,
    report: CleanupReport,
    cutoff: datetime,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> tuple[str | None, int, bool]:
    """Merge the stored sessions with the recorded ones, then each session's contents.

    Both sides come in ID order, a batch at a time, so memory stays flat however large
    the store is and the database is read through its indexes. From the name after
    ``after``, at most ``limit`` names: (the last one visited, how many, whether that was
    the end).
    """
    listed = run.context.blobs.list_children("sessions/")
    if after is not None:
        listed = itertools.dropwhile(lambda name: name <= after, listed)
    recorded = _recorded_sessions(run, after)
    chunk: list[tuple[str, bool]] = []
    last: str | None = None
    visited = 0
    for session_id, on_disk, in_db in _merge(listed, recorded):
        if visited == limit:
            _reconcile_sessions(run, report, chunk, cutoff)
            return last, visited, False
        visited += 1
        last = session_id
        if session_id in run.ledger.sessions:
            continue  # closed by an earlier pass of this (dry) run
        valid = SESSION_ID_RE.fullmatch(session_id) is not None
        if valid and on_disk and not in_db and _recorded(run, session_id):
            in_db = True  # the merge missed its record: live bytes, never an orphan tree
        if not valid or (on_disk and not in_db):
            _orphan_tree(run, report, session_id, cutoff)
            run.progress(report.operation, 1)
            continue
        chunk.append((session_id, on_disk))
        if len(chunk) == RECONCILE_CHUNK:
            _reconcile_sessions(run, report, chunk, cutoff)
            chunk = []
    _reconcile_sessions(run, report, chunk, cutoff)
    return last, visited, True


def _reconcile_sessions(
    run: Run, report: CleanupReport, chunk: list[tuple[str, bool]], cutoff: datetime
) -> None:
    """One query for the records of a whole chunk of sessions, then one listing per session.

    A consistent session (its sorted names equal its record IDs, all ready) costs a list
    comparison; only the others are compared as sets, and only names without a record
    are stat-ed.
    """
    if not chunk:
        return
    blobs = run.context.blobs
    recorded = run.context.catalog.recorded_ids([sid for sid, _ in chunk])
    for session_id, on_disk in chunk:
        records = recorded[session_id]
        prefix = session_prefix(session_id)
        try:
            # Records but no folder in the listing: look anyway before calling their bytes
            # lost (one listing, only where something already looks wrong).
            names = list(blobs.list_children(prefix)) if on_disk or records.ids else []
        except EphemeraError as exc:
            report.error(f"list {prefix}", exc.message)
            continue
        if names == records.ids and not records.unready:
            continue
        states = dict.fromkeys(records.ids, ArtifactState.READY.value) | records.unready
        _reconcile_session(run, report, session_id, cutoff, set(names), states)
    run.progress(report.operation, len(chunk))


def _recorded_sessions(run: Run, after: str | None) -> Iterator[str]:
    while batch := run.context.catalog.session_ids(after, run.batch_size * 4):
        yield from batch
        after = batch[-1]


def _recorded(run: Run, session_id: str) -> bool:
    """One point query before a tree is taken for an orphan: trees without a record are rare,
    and a merge that went wrong (the store's order and the database's disagreeing) must not
    cost a live session its bytes."""
    return run.context.catalog.get_session_row(session_id) is not None


def _orphan_tree(run: Run, report: CleanupReport, session_id: str, cutoff: datetime) -> None:
    """Bytes of a session with no record at all: every old one goes."""
    blobs = run.context.blobs
    prefix = f"sessions/{session_id}/"
    stats = list(_safe_list(blobs, prefix, report))
    old = [s for s in stats if s.modified_at < cutoff]
    for stat in old:
        report.add(CleanupItem(ItemKind.BLOB, stat.key, session_id, stat.size, Rule.NO_RECORD))
    if run.dry_run or not old:
        return
    try:
        if len(old) == len(stats):
            blobs.delete_prefix(prefix)  # one sweep, and no empty folder left behind
        else:
            for stat in old:
                blobs.delete(stat.key)
    except EphemeraError as exc:
        report.error(f"session {session_id}", exc.message)


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
