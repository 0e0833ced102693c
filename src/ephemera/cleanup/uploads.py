"""The ``expired-upload`` rule (part of ``expired``): resumable uploads past their expiry.

An incomplete upload past its ``Upload-Expires`` takes no more bytes (it answers 410); this
removes its row, then its pieces, and counts the recorded bytes it frees. A finished
upload's row is only bookkeeping (its artifact lives on): a real run drops it uncounted.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ephemera.blobs import artifact_key
from ephemera.blobs.resumable import ResumableBlobs
from ephemera.catalog.resumable import DONE
from ephemera.cleanup.records import CleanupItem, CleanupReport, ItemKind, Rule
from ephemera.cleanup.run import Run
from ephemera.errors import EphemeraError


def expired_uploads(run: Run, report: CleanupReport) -> None:
    context = run.context
    blobs = context.blobs
    if not isinstance(blobs, ResumableBlobs):
        return
    # A writer still sending holds its upload; one silent this long has lost it.
    stale_before = run.now - timedelta(seconds=context.settings.tus_claim_timeout_s)
    after: tuple[datetime, str] | None = None
    while batch := context.catalog.expired_uploads(run.now, after, run.batch_size):
        after = (batch[-1].expires_at, batch[-1].id)
        for upload in batch:
            if upload.session_id in run.ledger.sessions:
                continue  # closed by an earlier pass of this (dry) run
            counted = upload.state != DONE
            item = CleanupItem(
                ItemKind.UPLOAD, upload.id, upload.session_id, upload.offset, Rule.EXPIRED_UPLOAD
            )
            if run.dry_run:
                # What the real run's drop_expired_upload spares: a live writer's upload.
                held = upload.writer is not None and not (
                    upload.heartbeat_at is not None and upload.heartbeat_at < stale_before
                )
                if counted and not held:
                    report.add(item)
                continue
            if not context.catalog.drop_expired_upload(upload.id, run.now, stale_before):
                continue  # held by a live writer, or removed by another run
            if not counted:
                continue
            try:
                blobs.discard_upload(upload.id, upload.pieces)
                # What an attempt at completing left: a pending record, bytes at the key.
                context.catalog.delete_pending_artifact(upload.id)
                blobs.delete(artifact_key(upload.session_id, upload.id))
            except EphemeraError as exc:
                # The row is gone: orphan reconciliation removes the pieces later.
                report.error(f"upload {upload.id}", exc.message)
            report.add(item)
        run.progress(report.operation, len(batch))
