"""The artifact passes: ``expired`` (temporary artifacts past their expiry) and
``old-results`` (producer outputs older than the result retention)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ephemera.catalog import ArtifactRule, ArtifactSweep, Candidate
from ephemera.cleanup.records import (
    CleanupItem,
    CleanupReport,
    ItemKind,
    ProtectedItem,
    ProtectedReason,
    Rule,
)
from ephemera.cleanup.run import DeletePipeline, Run
from ephemera.cleanup.uploads import expired_uploads


def expired(run: Run, report: CleanupReport) -> None:
    _artifact_pass(run, report, ArtifactSweep(ArtifactRule.EXPIRED, run.now, run.now))
    expired_uploads(run, report)


def old_results(run: Run, report: CleanupReport) -> None:
    days = run.request.days_old
    if days is None:
        days = run.context.settings.result_retention_days
    cutoff = run.now - timedelta(days=days)
    _artifact_pass(run, report, ArtifactSweep(ArtifactRule.OLD_RESULTS, run.now, cutoff))


def _artifact_pass(run: Run, report: CleanupReport, sweep: ArtifactSweep) -> None:
    catalog = run.context.catalog
    rule = Rule(sweep.rule)
    after: tuple[Any, str] | None = None
    with DeletePipeline(run, report, rule) as pipeline:
        while chunk := catalog.artifact_candidates(sweep, after, run.sweep_chunk):
            after = (chunk[-1].order_key, chunk[-1].id)
            # The sweep's order (expiry, age) is unrelated to where the records and files
            # are; by session, a batch's rows share the pages of the table and of most of its
            # indexes, and its files share folders: each commit writes far fewer pages.
            chunk.sort(key=_by_session)
            for start in range(0, len(chunk), run.delete_batch):
                batch = chunk[start : start + run.delete_batch]
                _batch(run, report, rule, sweep, pipeline, batch)
                run.progress(report.operation, len(batch))


def _by_session(candidate: Candidate) -> tuple[str, str]:
    return candidate.session_id, candidate.id


def _batch(
    run: Run,
    report: CleanupReport,
    rule: Rule,
    sweep: ArtifactSweep,
    pipeline: DeletePipeline,
    batch: list[Candidate],
) -> None:
    doomed = []
    for candidate in batch:
        if run.ledger.gone(candidate):
            continue
        if candidate.leased:
            report.spare(
                ProtectedItem(
                    ItemKind.ARTIFACT,
                    candidate.id,
                    candidate.session_id,
                    candidate.size,
                    rule,
                    ProtectedReason.LEASED,
                )
            )
        else:
            doomed.append(candidate)
    if run.dry_run:
        for c in doomed:
            report.add(CleanupItem(ItemKind.ARTIFACT, c.id, c.session_id, c.size, rule))
            run.ledger.remove_artifact(c.session_id, c.id, c.size)
    else:
        pipeline.push(run.context.catalog.claim_artifacts(sweep, [c.id for c in doomed]))
