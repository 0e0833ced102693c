"""The catalog: every SQL statement ephemera runs lives in this package.

``Catalog`` is the documented facade over it, one method per operation, each delegating to
a function in the module that owns the concept: ``db`` (engine, transactions, error
translation), ``migrate``, ``sessions``, ``artifacts``, ``leases``, ``tasks``, ``sweeps``
(which records a cleanup selects), ``orphans``, ``verification``, ``stats``, ``audit``,
``keys``, ``locks``, ``imports`` (the import ledger), ``idempotency`` (Idempotency-Key
reservations and answers) and ``events`` (the event log; with ``notify``, the wake-ups after a
commit); ``rows`` builds models from rows, ``predicates`` holds the conditions they share and
``usage`` counts what a session holds. The web console's sign-ins and usage samples are
``console``'s, reached as ``catalog.console``; its overview's reads are ``overview``'s,
reached as ``catalog.overview``, and its lists (sessions a page at a time) ``browse``'s,
reached as ``catalog.browse``.
The facade lists every operation, one delegating method each; the methods of resumable
uploads, idempotency keys, link keys, the event log, the maintained artifact totals, the
cleanup cursors and orphan reconciliation are bases of it (``UploadRows``,
``IdempotencyRows``, ``LinkKeyRows``, ``EventRows``, ``TotalsRows``, ``CursorRows``,
``OrphanRows``) that live beside their SQL. The SQL and
the reasons for it are in those modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row

from ephemera.catalog import (
    artifacts,
    audit,
    db,
    imports,
    keys,
    leases,
    locks,
    migrate,
    sessions,
    stats,
    sweeps,
    tasks,
    verification,
)
from ephemera.catalog.browse import BrowseCatalog
from ephemera.catalog.console import ConsoleCatalog
from ephemera.catalog.cursors import CleanupCursor, CursorRows
from ephemera.catalog.db import Database, open_database
from ephemera.catalog.events import EventRows, Start
from ephemera.catalog.idempotency import KEY_LOST, Answer, Completion, IdempotencyRows, KeyRecord
from ephemera.catalog.linkkeys import LinkKeyRows
from ephemera.catalog.locks import AdvisoryLocks
from ephemera.catalog.notify import (
    TASKS,
    Notifier,
    PgListener,
    SocketWakeups,
    Wakeup,
    session_topic,
)
from ephemera.catalog.orphans import OrphanRows
from ephemera.catalog.overview import OverviewCatalog
from ephemera.catalog.predicates import RESULT_KINDS
from ephemera.catalog.resumable import UploadRows
from ephemera.catalog.sessions import DiscardUploads
from ephemera.catalog.sweeps import (
    ArtifactRule,
    ArtifactSweep,
    Candidate,
    SessionRule,
    SessionSweep,
)
from ephemera.catalog.tasks import Progress, task_producer
from ephemera.catalog.totals import Total, TotalsRows
from ephemera.catalog.verification import Stored
from ephemera.models import (
    AdminKey,
    Artifact,
    AuditEntry,
    Claim,
    ImportEntry,
    ImportOrigin,
    Lease,
    Session,
    Task,
    TaskInput,
    TaskState,
)


class Catalog(
    UploadRows, IdempotencyRows, LinkKeyRows, EventRows, TotalsRows, CursorRows, OrphanRows
):
    """The SQL owner: sessions, artifacts, leases, tasks, cleanup, integrity, keys, audit."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._advisory = AdvisoryLocks(database.engine)
        self._listener: PgListener | None = None
        # Wake-ups after commits; a listener for other processes' (NOTIFY on PostgreSQL,
        # datagrams on SQLite) joins in at the first subscriber.
        self.notifier = Notifier(self._listen)
        self._socket_wakeups = (
            SocketWakeups.for_sqlite(database.sqlite_file, self.notifier)
            if database.dialect == "sqlite"
            else None
        )
        database.committed = self._committed
        self._discard_uploads: DiscardUploads | None = None
        self.console = ConsoleCatalog(database)
        self.overview = OverviewCatalog(database)
        self.browse = BrowseCatalog(database)

    @classmethod
    def open(
        cls, url: str, *, create: bool = True, file_mode: int = 0o600, dir_mode: int = 0o700
    ) -> Catalog:
        """Check ``url`` and build the engine; connects to nothing.

        An SQLite file is created here (with its directories, in these modes) unless
        ``create=False``: then the database must exist (``prepare`` raises StoreMissing).
        """
        return cls(open_database(url, create=create, file_mode=file_mode, dir_mode=dir_mode))

    @property
    def url(self) -> str:
        return self._db.url

    @property
    def dialect(self) -> str:
        return self._db.dialect

    @property
    def engine(self) -> Engine:
        return self._db.engine

    def use_clock(self, now: Callable[[], datetime]) -> None:
        """The clock of the times the catalog writes by itself (when an event was recorded)."""
        self._db.now = now

    def dispose(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        if self._socket_wakeups is not None:
            self._socket_wakeups.stop()
        self.release_locks()
        self._db.engine.dispose()

    def _listen(self) -> None:
        if self._socket_wakeups is not None:
            self._socket_wakeups.start()
        elif self._db.dialect == "postgresql":
            self._listener = PgListener(self._db.engine, self.notifier)
            self._listener.start()

    def _committed(self, topics: Iterable[str]) -> None:
        self.notifier.publish(topics)
        if self._socket_wakeups is not None:
            self._socket_wakeups.send(topics)

    # -- schema ---------------------------------------------------------------------------

    def revisions(self) -> tuple[str | None, str]:
        return migrate.revisions(self._db)

    def migrate(self) -> None:
        migrate.migrate(self._db)

    def prepare(self, *, migrate_empty: bool = True) -> None:
        migrate.prepare(self._db, migrate_empty=migrate_empty)

    def ping(self) -> None:
        db.ping(self._db)

    # -- sessions -------------------------------------------------------------------------

    def insert_session(
        self,
        values: dict[str, Any],
        confirm: Callable[[Session], None] | None = None,
        completion: Completion[Session] | None = None,
    ) -> Session:
        return sessions.insert_session(self._db, values, confirm, completion)

    def is_live(self, session_id: str, now: datetime) -> bool:
        return sessions.is_live(self._db, session_id, now)

    def session_with_liveness(self, session_id: str, now: datetime) -> Row[Any] | None:
        return sessions.session_with_liveness(self._db, session_id, now)

    def get_session_row(self, session_id: str) -> Row[Any] | None:
        return sessions.get_session_row(self._db, session_id)

    def get_session(self, session_id: str) -> Session | None:
        return sessions.get_session(self._db, session_id)

    def list_sessions_with_leases(
        self, after: str | None, limit: int, now: datetime
    ) -> list[tuple[Session, int]]:
        return sessions.list_sessions_with_leases(self._db, after, limit, now)

    def touch_session(
        self, session_id: str, now: datetime, expires_at: datetime | None, not_since: datetime
    ) -> None:
        sessions.touch_session(self._db, session_id, now, expires_at, not_since)

    def update_session(
        self,
        session_id: str,
        now: datetime,
        change: Callable[[Row[Any]], dict[str, Any]],
        confirm: Callable[[Session], None] | None = None,
    ) -> tuple[Session, Session] | None:
        return sessions.update_session(self._db, session_id, now, change, confirm)

    def begin_close(self, session_id: str, now: datetime, *, force: bool = True) -> Session | None:
        return sessions.begin_close(self._db, session_id, now, force=force)

    def drop_session(self, session_id: str) -> tuple[int, int] | None:
        return sessions.drop_session(self._db, session_id, self._discard_uploads)

    def closing_session_ids(self, after: str | None, limit: int) -> list[str]:
        return sessions.closing_session_ids(self._db, after, limit)

    def drop_sessions(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        return sessions.drop_sessions(self._db, session_ids, self._discard_uploads)

    def discard_uploads_with(self, discard: DiscardUploads | None) -> None:
        """What removes the bytes of a dropped session's open resumable uploads; it runs
        inside the drop, so a failure drops nothing (set by the Store, which owns blobs)."""
        self._discard_uploads = discard

    # -- artifacts ------------------------------------------------------------------------

    def insert_pending_artifact(self, values: dict[str, Any]) -> bool:
        return artifacts.insert_pending_artifact(self._db, values)

    def finalize_artifact(
        self,
        artifact_id: str,
        session_id: str,
        values: dict[str, Any],
        quota_bytes: int | None,
        commit_bytes: Callable[[], object],
        claim: tuple[str, str] | None = None,
        completion: Completion[Artifact] | None = None,
    ) -> Artifact:
        return artifacts.finalize_artifact(
            self._db, artifact_id, session_id, values, quota_bytes, commit_bytes, claim, completion
        )

    def finalize_import(
        self,
        artifact_id: str,
        session_id: str,
        values: dict[str, Any],
        quota_bytes: int | None,
        commit_bytes: Callable[[], object],
        origin: ImportOrigin,
    ) -> tuple[Artifact, ImportEntry]:
        return artifacts.finalize_import(
            self._db, artifact_id, session_id, values, quota_bytes, commit_bytes, origin
        )

    def insert_ready_artifact(
        self,
        row: dict[str, Any],
        quota_bytes: int | None,
        commit_bytes: Callable[[], object],
    ) -> Artifact:
        return artifacts.insert_ready_artifact(self._db, row, quota_bytes, commit_bytes)

    def insert_ready_artifacts(
        self,
        session_id: str,
        rows: Sequence[dict[str, Any]],
        quota_bytes: int | None,
        commit_bytes: Sequence[Callable[[], object]],
        claim: tuple[str, str] | None = None,
    ) -> list[Artifact]:
        return artifacts.insert_ready_artifacts(
            self._db, session_id, rows, quota_bytes, commit_bytes, claim
        )

    def delete_pending_artifact(self, artifact_id: str) -> None:
        artifacts.delete_pending_artifact(self._db, artifact_id)

    def get_artifact(self, session_id: str, artifact_id: str) -> Artifact | None:
        return artifacts.get_artifact(self._db, session_id, artifact_id)

    def list_artifacts(
        self, session_id: str, kind: str | None, after: str | None, limit: int
    ) -> list[Artifact]:
        return artifacts.list_artifacts(self._db, session_id, kind, after, limit)

    def mark_artifact_deleting(
        self, session_id: str, artifact_id: str, now: datetime
    ) -> Artifact | None:
        return artifacts.mark_artifact_deleting(self._db, session_id, artifact_id, now)

    def deleting_artifacts(self, after: str | None, limit: int) -> list[tuple[str, str]]:
        return artifacts.deleting_artifacts(self._db, after, limit)

    def set_retention(
        self, session_id: str, artifact_id: str, retain_until: datetime | None
    ) -> Artifact | None:
        return artifacts.set_retention(self._db, session_id, artifact_id, retain_until)

    # -- import ledger --------------------------------------------------------------------

    def find_import(self, session_id: str, origin: ImportOrigin) -> ImportEntry | None:
        return imports.find_import(self._db, session_id, origin)

    def find_live_import(
        self, session_id: str, origin: ImportOrigin, now: datetime
    ) -> tuple[bool, ImportEntry | None]:
        return imports.find_live_import(self._db, session_id, origin, now)

    def import_of_artifact(self, session_id: str, artifact_id: str) -> ImportEntry | None:
        return imports.import_of_artifact(self._db, session_id, artifact_id)

    def list_imports(
        self, session_id: str, source: str | None, after: int | None, limit: int
    ) -> list[tuple[int, ImportEntry]]:
        return imports.list_imports(self._db, session_id, source, after, limit)

    # -- leases ---------------------------------------------------------------------------

    def insert_lease(self, lease: Lease) -> None:
        leases.insert_lease(self._db, lease)

    def get_lease(self, session_id: str, lease_id: str) -> Lease | None:
        return leases.get_lease(self._db, session_id, lease_id)

    def renew_lease(
        self, session_id: str, lease_id: str, now: datetime, expires_at: datetime
    ) -> Lease | None:
        return leases.renew_lease(self._db, session_id, lease_id, now, expires_at)

    def delete_lease(self, session_id: str, lease_id: str) -> bool:
        return leases.delete_lease(self._db, session_id, lease_id)

    def list_leases(self, session_id: str) -> list[Lease]:
        return leases.list_leases(self._db, session_id)

    def purge_expired_leases(self, now: datetime) -> int:
        return leases.purge_expired_leases(self._db, now)

    # -- tasks ----------------------------------------------------------------------------

    def claimed_session(self, task_id: str, claim_id: str) -> str | None:
        return tasks.claimed_session(self._db, task_id, claim_id)

    def claimed_input(
        self, task_id: str, claim_id: str, artifact_id: str
    ) -> tuple[bool, Artifact | None]:
        return artifacts.claimed_input(self._db, task_id, claim_id, artifact_id)

    def task_inputs(self, refs: Sequence[TaskInput], now: datetime) -> list[Artifact]:
        return tasks.task_inputs(self._db, refs, now)

    def insert_task(
        self,
        values: dict[str, Any],
        refs: Sequence[TaskInput],
        completion: Completion[Task] | None = None,
    ) -> Task:
        return tasks.insert_task(self._db, values, refs, completion)

    def insert_follow_up(
        self, values: dict[str, Any], refs: Sequence[TaskInput], artifact_id: str
    ) -> Task | None:
        return tasks.insert_follow_up(self._db, values, refs, artifact_id)

    def get_task(self, session_id: str, task_id: str) -> Task | None:
        return tasks.get_task(self._db, session_id, task_id)

    def list_tasks(
        self, session_id: str, state: TaskState | None, after: str | None, limit: int
    ) -> list[Task]:
        return tasks.list_tasks(self._db, session_id, state, after, limit)

    def claim_task(
        self,
        processors: Sequence[str],
        worker: str,
        claim_id: str,
        now: datetime,
        until: datetime,
        retry_delay: Callable[[int], float],
    ) -> tuple[Claim | None, list[tuple[str, str]]]:
        return tasks.claim_task(self._db, processors, worker, claim_id, now, until, retry_delay)

    def heartbeat_task(
        self,
        task_id: str,
        claim_id: str,
        until: datetime,
        steps: Sequence[Progress] = (),
    ) -> bool:
        return tasks.heartbeat_task(self._db, task_id, claim_id, until, steps)

    def finish_task(
        self,
        task_id: str,
        claim_id: str,
        now: datetime,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        retry_delay: Callable[[int], float] | None = None,
        steps: Sequence[Progress] = (),
    ) -> tuple[Task, list[tuple[str, str]]]:
        return tasks.finish_task(
            self._db,
            task_id,
            claim_id,
            now,
            result=result,
            error=error,
            retry_delay=retry_delay,
            steps=steps,
        )

    def cancel_task(
        self, session_id: str, task_id: str, now: datetime
    ) -> tuple[Task, list[tuple[str, str]]] | None:
        return tasks.cancel_task(self._db, session_id, task_id, now)

    # -- cleanup sweeps -------------------------------------------------------------------

    def artifact_candidates(
        self, sweep: ArtifactSweep, after: tuple[Any, str] | None, limit: int
    ) -> list[Candidate]:
        return sweeps.artifact_candidates(self._db, sweep, after, limit)

    def claim_artifacts(self, sweep: ArtifactSweep, ids: Sequence[str]) -> list[Candidate]:
        return sweeps.claim_artifacts(self._db, sweep, ids)

    def drop_deleting_artifacts(self, ids: Sequence[str]) -> list[tuple[str, str, int]]:
        return sweeps.drop_deleting_artifacts(self._db, ids)

    def session_candidates(
        self, sweep: SessionSweep, after: str | None, limit: int
    ) -> list[Candidate]:
        return sweeps.session_candidates(self._db, sweep, after, limit)

    def claim_session(self, sweep: SessionSweep) -> bool:
        return sweeps.claim_session(self._db, sweep)

    def session_usage_all(self, session_id: str) -> tuple[int, int]:
        return sweeps.session_usage_all(self._db, session_id)

    def eviction_candidates(
        self, now: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[Candidate]:
        return sweeps.eviction_candidates(self._db, now, after, limit)

    # -- integrity ------------------------------------------------------------------------

    def verify_totals(self, session_id: str | None, due_before: datetime | None) -> tuple[int, int]:
        return verification.verify_totals(self._db, session_id, due_before)

    def verify_batch(self, session_id: str | None, after: str | None, limit: int) -> list[Stored]:
        return verification.verify_batch(self._db, session_id, after, limit)

    def scrub_batch(self, due_before: datetime, skip: Sequence[str], limit: int) -> list[Stored]:
        return verification.scrub_batch(self._db, due_before, skip, limit)

    def mark_verified(self, ids: Sequence[str], now: datetime) -> None:
        verification.mark_verified(self._db, ids, now)

    def flag_artifacts(self, flags: Sequence[tuple[str, str, str]]) -> set[str]:
        return verification.flag_artifacts(self._db, flags)

    def flagged_counts(self) -> dict[str, int]:
        return verification.flagged_counts(self._db)

    def never_verified_count(self) -> int:
        return verification.never_verified_count(self._db)

    # -- stats ----------------------------------------------------------------------------

    def totals(self) -> tuple[int, int, int]:
        return stats.totals(self._db)

    def session_states(self) -> dict[str, int]:
        return stats.session_states(self._db)

    def artifact_breakdown(self) -> list[tuple[str, str, int, int]]:
        return [(t.storage_class, t.state, t.artifacts, t.bytes) for t in self.artifact_totals()]

    def lease_counts(self, now: datetime) -> dict[str, int]:
        return stats.lease_counts(self._db, now)

    def task_counts(self) -> dict[str, int]:
        return stats.task_counts(self._db)

    def table_row_counts(self) -> dict[str, int]:
        return stats.table_row_counts(self._db)

    def cleanable_artifacts(self, sweep: ArtifactSweep) -> tuple[int, int, int]:
        return stats.cleanable_artifacts(self._db, sweep)

    def cleanable_sessions(self, sweep: SessionSweep) -> tuple[int, int, int]:
        return stats.cleanable_sessions(self._db, sweep)

    def cleanable_uploads(self, now: datetime, stale_before: datetime) -> tuple[int, int]:
        return stats.cleanable_uploads(self._db, now, stale_before)

    # -- audit ----------------------------------------------------------------------------

    def insert_audit(
        self,
        at: datetime,
        actor: str,
        action: str,
        target: str | None,
        params: dict[str, Any],
        result: dict[str, Any],
    ) -> int:
        return audit.insert_audit(self._db, at, actor, action, target, params, result)

    def list_audit(
        self,
        before: int | None,
        limit: int,
        action_prefix: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditEntry]:
        return audit.list_audit(self._db, before, limit, action_prefix, actor, since, until)

    def last_audit_per_action(self, action_prefix: str) -> list[AuditEntry]:
        return audit.last_audit_per_action(self._db, action_prefix)

    # -- API keys -------------------------------------------------------------------------

    def insert_key(
        self,
        name: str,
        key_hash: str,
        now: datetime,
        role: str = "admin",
        expires_at: datetime | None = None,
    ) -> None:
        keys.insert_key(self._db, name, key_hash, now, role, expires_at)

    def find_key(self, key_hash: str) -> AdminKey | None:
        return keys.find_key(self._db, key_hash)

    def touch_key(self, name: str, now: datetime, not_since: datetime) -> None:
        keys.touch_key(self._db, name, now, not_since)

    def list_keys(self, role: str = "admin") -> list[AdminKey]:
        return keys.list_keys(self._db, role)

    def delete_key(self, name: str, role: str = "admin") -> bool:
        return keys.delete_key(self._db, name, role)

    def count_admin_keys(self) -> int:
        return keys.count_admin_keys(self._db)

    # -- locks ----------------------------------------------------------------------------

    def try_lock(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        return locks.try_lock(self._db, self._advisory, name, holder, now, until)

    def release_locks(self) -> None:
        self._advisory.release_all()


__all__: Sequence[str] = [
    "KEY_LOST",
    "RESULT_KINDS",
    "TASKS",
    "Answer",
    "ArtifactRule",
    "ArtifactSweep",
    "Candidate",
    "Catalog",
    "CleanupCursor",
    "Completion",
    "KeyRecord",
    "Progress",
    "SessionRule",
    "SessionSweep",
    "Start",
    "Stored",
    "Total",
    "Wakeup",
    "session_topic",
    "task_producer",
]
