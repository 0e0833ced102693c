"""The artifact passes: ``expired`` (temporary artifacts past their expiry) and
``old-results`` (producer outputs older than the result retention)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ephemera.catalog import ArtifactRule, ArtifactSweep
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
        while batch := catalog.artifact_candidates(sweep, after, run.delete_batch):
            after = (batch[-1].order_key, batch[-1].id)
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
                pipeline.push(catalog.claim_artifacts(sweep, [c.id for c in doomed]))
            run.progress(report.operation, len(batch))
