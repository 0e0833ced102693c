"""One cleanup run: what its passes share (the context, the request, the instant, the dry-run
ledger), and the act step every artifact-deleting pass ends with."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

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
from ephemera.removal import Removal, drop_records, remove_artifacts, remove_bytes

BATCH = 500
# Artifact passes claim more at a time: fewer statements and commits per item, and more
# files of one folder unlinked together.
DELETE_BATCH = 2000
# Candidates an artifact pass selects at a time (about 30 MB at most), then deletes in
# batches of DELETE_BATCH in session order: a batch's rows then share the pages of the table
# and of most of its indexes, and its files their folders. Larger chunks write fewer pages
# per deleted item; the chunk bounds the memory.
SWEEP_CHUNK = 50000


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
    delete_batch: int = DELETE_BATCH
    sweep_chunk: int = SWEEP_CHUNK

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
    _count(report, removal, rule)


def _count(report: CleanupReport, removal: Removal, rule: Rule) -> None:
    for artifact_id, error in removal.failed.items():
        report.error(f"artifact {artifact_id}", error)
    for item in removal.removed:
        report.add(
            CleanupItem(ItemKind.ARTIFACT, item.artifact_id, item.session_id, item.size, rule)
        )


class DeletePipeline:
    """``delete_marked`` for a pass of many batches: one batch's bytes are removed on a
    second thread while the pass selects and marks the next one, and its records are
    dropped while the thread goes on to the next batch's bytes.

    Each item still goes mark, bytes, record (``ephemera.removal``): a batch's records are
    dropped only once its bytes are done. Unlinking releases the GIL, so the disk works
    while the database does. At most two batches are in flight: memory stays flat.
    On an error the batches in flight keep their marks, for the next run to finish.
    """

    def __init__(self, run: Run, report: CleanupReport, rule: Rule) -> None:
        self._run = run
        self._report = report
        self._rule = rule
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ephemera-unlink")
        self._pending: tuple[list[tuple[str, str]], Future[dict[str, str]]] | None = None

    def __enter__(self) -> DeletePipeline:
        return self

    def push(self, marked: Sequence[Candidate]) -> None:
        """Queue the bytes of a marked batch, then finish the batch before it."""
        pairs = [(c.session_id, c.id) for c in marked]
        queued = self._pool.submit(remove_bytes, self._run.context, pairs) if pairs else None
        self._finish()
        if queued is not None:
            self._pending = (pairs, queued)

    def _finish(self) -> None:
        if self._pending is None:
            return
        pairs, bytes_removed = self._pending
        self._pending = None
        run = self._run
        removal = drop_records(run.context, pairs, bytes_removed.result(), self._rule, run.now)
        _count(self._report, removal, self._rule)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                self._finish()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
