"""One cleanup run: what its passes share (the context, the request, the instant, the dry-run
ledger), and the act step every artifact-deleting pass ends with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ephemera.catalog import Candidate
from ephemera.cleanup.records import (
    CleanupItem,
    CleanupReport,
    CleanupRequest,
    ItemKind,
    Operation,
    Progress,
    Rule,
)
from ephemera.context import Context
from ephemera.removal import remove_artifacts

BATCH = 500


@dataclass(slots=True)
class DryRunLedger:
    """What a real run would have removed by now.

    A dry run deletes nothing, so later passes of ``all`` would see again what earlier ones
    report; they consult this and skip it.
    """

    sessions: set[str] = field(default_factory=set)
    artifacts: set[str] = field(default_factory=set)
    freed: int = 0
    freed_in: dict[str, int] = field(default_factory=dict)

    def remove_artifact(self, session_id: str, artifact_id: str, size: int) -> None:
        self.artifacts.add(artifact_id)
        self.freed += size
        self.freed_in[session_id] = self.freed_in.get(session_id, 0) + size

    def close_session(self, session_id: str, size: int) -> None:
        self.sessions.add(session_id)
        self.freed += size

    def gone(self, candidate: Candidate) -> bool:
        return candidate.session_id in self.sessions or candidate.id in self.artifacts


@dataclass(frozen=True, slots=True)
class Run:
    """One run at one instant ``now``: every rule is evaluated at that instant."""

    context: Context
    request: CleanupRequest
    now: datetime
    progress: Progress
    ledger: DryRunLedger = field(default_factory=DryRunLedger)
    batch_size: int = BATCH

    @property
    def dry_run(self) -> bool:
        return self.request.dry_run

    def report(self, operation: Operation) -> CleanupReport:
        return CleanupReport(operation, self.dry_run, keep_items=self.request.details)


def delete_marked(
    run: Run,
    report: CleanupReport,
    marked: Sequence[Candidate],
    rule: Rule,
    *,
    frees_bytes: bool = True,
) -> None:
    """Remove artifacts this run marked ``deleting`` and count what it removed."""
    removal = remove_artifacts(
        run.context,
        [(c.session_id, c.id) for c in marked],
        rule,
        run.now,
        frees_bytes=frees_bytes,
    )
    for artifact_id, error in removal.failed.items():
        report.error(f"artifact {artifact_id}", error)
    for item in removal.removed:
        report.add(
            CleanupItem(ItemKind.ARTIFACT, item.artifact_id, item.session_id, item.size, rule)
        )
