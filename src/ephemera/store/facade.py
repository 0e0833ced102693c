"""The library API: :class:`Store`, one flat facade over one module per concept.

A method hands the engine's :class:`~ephemera.context.Context` (catalog, blobs, settings,
clock, hooks, volume) to the module that owns its concept, and does here only what joins two
concepts (a task's end removes the outputs it dropped; a new session replaces what is left
of a dead one). Closing, recovery, removal, cleanup and verification are the engine's
(``ephemera.cleanup``, ``ephemera.integrity``): the Store starts them and records them.

=====================  ===============================================================
``store.sessions``     create, get, update, list and inspect sessions
``store.access``       which token or key opens what; activity and last-use writes
``store.keys``         admin, worker and client keys (one set of names, a role)
``store.uploads``      an artifact's metadata checks, streamed writes, the commit
``store.imports``      files imported exactly once: the import ledger, follow-up tasks
``store.artifacts``    look up, list, read, retain and delete artifacts
``store.leases``       take, renew, release and list leases
``store.idempotency``  Idempotency-Key: reserve, replay or refuse, complete with the resource
``store.links``        signed download links and the keys that sign them
``store.tasks``        the submitting side of tasks, and the enabled processors
``store.work``         the worker's side: claim, heartbeat, inputs, outputs, the end
``store.events``       following a session's events (live streams, reconnects, pruning)
``store.audit``        the audit log
``store.maintenance``  cleanup, verification, the audit log and the stats, as the Store runs them
``store.console``      the web console's sign-ins and usage samples
``store.overview``     the overview's lists (largest, idlest sessions; the next tick)
``store.browse``       sessions a page at a time in indexed orders, with their figures
``store.limits``       the bounds on labels, timeouts, metadata and page sizes
``store.paging``       pages of a listing
``store.schema``       creating or upgrading the schema (``ephemera migrate``)
=====================  ===============================================================

The flat API is this class and its bases: each base (``KeyMethods``, ``LeaseMethods``,
``WorkMethods``, ``MaintenanceMethods``, ``EventMethods``, ``IdempotencyMethods``,
``ImportMethods``, ``LinkMethods``, ``ConsoleMethods``, ``OverviewMethods``,
``BrowseMethods``) lives beside the functions it delegates to; what joins concepts stays here.

Close (guarantee 4, "no leak")::

    open --mark--> closing --remove the session's prefix in one sweep--> --drop records--> gone

    From ``closing`` on nothing can be added (uploads commit only into an open session). A
    crash after the mark leaves the session ``closing``; ``recover()`` (run at start-up) and
    the cleanup engine finish it. ``close_session`` returns only after the sweep succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from ephemera import ids
from ephemera.blobs import (
    BlobStore,
    CreatesContainer,
    LocalPaths,
    RangedReads,
    open_blob_store,
)
from ephemera.catalog import Catalog, Completion
from ephemera.clock import Clock, SystemClock
from ephemera.config import Settings
from ephemera.context import Context
from ephemera.errors import InsufficientStorage
from ephemera.hooks import Hooks, Webhook
from ephemera.metrics import Metrics
from ephemera.models import (
    AdminKey,
    Artifact,
    CloseReport,
    CreatedSession,
    Page,
    Session,
    StorageClass,
    Task,
    TaskState,
)
from ephemera.processors import ProcessorInfo, Registry
from ephemera.recovery import recover
from ephemera.removal import remove_session, upload_discarder
from ephemera.store import (
    access,
    artifacts,
    browse,
    console,
    events,
    idempotency,
    imports,
    keys,
    leases,
    limits,
    links,
    maintenance,
    overview,
    sessions,
    tasks,
    uploads,
    work,
)
from ephemera.store.idempotency import UploadKey
from ephemera.store.resumable import Resumables
from ephemera.store.sessions import DEFAULT, UNCHANGED, Default, Unchanged
from ephemera.store.sessions import session_not_found as _session_not_found
from ephemera.store.uploads import Upload
from ephemera.volume import Volume

log = logging.getLogger("ephemera.store")


class Store(
    keys.KeyMethods,
    leases.LeaseMethods,
    work.WorkMethods,
    maintenance.MaintenanceMethods,
    events.EventMethods,
    idempotency.IdempotencyMethods,
    imports.ImportMethods,
    links.LinkMethods,
    console.ConsoleMethods,
    overview.OverviewMethods,
    browse.BrowseMethods,
):
    """Sessions and artifacts. Thread-safe: every call takes its own database connection.

    The import ledger's methods (``import_file``, ``begin_import``, ``finish_import``,
    ``follow_up_import``, ``find_import``, ``list_imports``) are :mod:`ephemera.store.imports`'.
    """

    def __init__(
        self,
        catalog: Catalog,
        blobs: BlobStore,
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.settings = settings or Settings()
        self.clock: Clock = clock or SystemClock()
        catalog.use_clock(self.clock.now)
        # Optional capabilities of the blob store, decided once.
        self._local_paths = blobs if isinstance(blobs, LocalPaths) else None
        self._ranged = blobs if isinstance(blobs, RangedReads) else None
        self.volume = Volume(self.settings)
        self._activity = access.ActivityWrites()
        self.hooks = Hooks()
        self.context = Context(catalog, blobs, self.settings, self.clock, self.hooks, self.volume)
        self.metrics = Metrics(catalog, self.volume)
        # Resumable (tus) uploads: create, append, inspect, terminate.
        self.resumable = Resumables(self.context)
        catalog.discard_uploads_with(upload_discarder(self.context))
        self._processors = tasks.Processors(self.settings)
        self.webhook: Webhook | None = None
        if self.settings.webhook_url:
            self.webhook = Webhook(self.settings.webhook_url)
            self.webhook.attach(self.hooks)

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        migrate_empty: bool = True,
        create: bool = True,
    ) -> Store:
        """Open the configured backends; migrate an empty database; refuse an outdated one.

        With ``create=False`` nothing is created: a missing store raises StoreMissing.
        """
        settings = settings or Settings()
        modes = {"file_mode": settings.file_mode_bits, "dir_mode": settings.dir_mode_bits}
        # Both URLs are checked before anything is created.
        blobs = open_blob_store(settings.resolved_blob_url(), **modes)
        catalog = Catalog.open(settings.resolved_database_url(), create=create, **modes)
        try:
            # SQLite cannot even open a database (it sizes its -shm file) on a full volume.
            Volume(settings).release_reserve_if_full()
            catalog.prepare(migrate_empty=migrate_empty)
        except BaseException:
            catalog.dispose()
            raise
        return cls(catalog, blobs, settings, clock)

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()
        self.catalog.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_ready(self) -> None:
        """Raise StorageError unless the database and the blob store both answer, and
        InsufficientStorage while free space is below ``low_space_bytes``."""
        self.catalog.ping()
        self.blobs.check()
        shortage = self.volume.low_space()
        if shortage is not None:
            raise InsufficientStorage(shortage)

    def prepare_blobs(self) -> None:
        """Start-up check of the blob store; with ``create_bucket``, create a missing bucket."""
        if self.settings.create_bucket and isinstance(self.blobs, CreatesContainer):
            self.blobs.create_container()
        self.check_blobs()

    def check_blobs(self) -> None:
        """StorageError unless the blob store answers (a worker's start-up check)."""
        self.blobs.check()

    def try_lock(self, name: str, holder: str, until: datetime) -> bool:
        """Take or extend the named lock until ``until``; False while another holder has it.

        Decides which of several processes runs a periodic job (cleanup, scrub)."""
        return self.catalog.try_lock(name, holder, self.clock.now(), until)

    # -- credentials and keys -------------------------------------------------------------

    def authenticate(self, session_id: str, credential: str) -> str | None:
        """Check that ``credential`` opens this live session, and record activity.

        Returns the admin key's name when an admin key was used (for the audit log).

        With a session token, a wrong token, an unknown or malformed ID, and an expired session
        all raise the same SessionUnreachable (a NotFound), so a caller cannot tell them apart;
        with an admin key a session that is not there is a plain NotFound. A key is judged
        as a key, before the session is looked at: an unknown, revoked or expired one is
        Unauthenticated, a worker or client key Forbidden.
        """
        return access.authenticate(self.context, self._activity, session_id, credential)

    def resolve_key(self, credential: str) -> AdminKey | None:
        """The key ``credential`` is, with its role; None if it is not a key (a session token).

        A credential with a key's prefix is only ever a key: unknown (never issued or revoked)
        or expired, it is Unauthenticated, never tried as a session token. Use is recorded at
        most every ``activity_write_interval_s``.
        """
        return access.resolve_key(self.context, self._activity, credential)

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        session_id: str | None = None,
        *,
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
        idle_timeout_s: int | Default | None = DEFAULT,
        max_age_s: int | Default | None = DEFAULT,
        confirm: Callable[[CreatedSession], None] | None = None,
        capped: bool = False,
        idempotency: Completion[CreatedSession] | None = None,
    ) -> CreatedSession:
        """Create a session; a client-chosen ID of a live session is a Conflict.

        An ID whose earlier session is gone, expired or half-closed starts afresh: whatever
        is left of the earlier one is removed first, so the new session is empty.
        ``confirm`` runs before the creation commits (e.g. to render the answer that hands
        out the token): if it raises, nothing is created. ``capped`` (a caller without an
        admin key) holds the timeouts asked for to the operator's ceilings
        (:meth:`check_ceilings`); the configured defaults always apply. ``idempotency``
        (see :meth:`reserve_key`) records the key's answer in the creating transaction.
        """
        return sessions.create(
            self.context,
            session_id,
            label=label,
            metadata=metadata,
            idle_timeout_s=idle_timeout_s,
            max_age_s=max_age_s,
            confirm=confirm,
            capped=capped,
            completion=idempotency,
        )

    def check_ceilings(self, timeouts: Mapping[str, Any]) -> None:
        """Refuse timeouts beyond what a caller without an admin key may ask for.

        ``timeouts`` holds the ``idle_timeout_s`` and ``max_age_s`` asked for (either may be
        absent). The idle timeout must be at most ``max_idle_timeout_s`` ("never" is for admin
        keys); where ``max_age_s`` is configured, the max age must be at most that. Without
        these, a session's own token (or a client key) could make it live forever.
        """
        limits.check_ceilings(self.settings, timeouts)

    def get_session(self, session_id: str) -> Session:
        """The live session with its artifact count and bytes; NotFound if it is not live."""
        return sessions.get(self.context, session_id)

    def update_session(
        self,
        session_id: str,
        *,
        label: str | Unchanged | None = UNCHANGED,
        metadata: Mapping[str, Any] | Unchanged = UNCHANGED,
        idle_timeout_s: int | Unchanged | None = UNCHANGED,
        max_age_s: int | Unchanged | None = UNCHANGED,
        confirm: Callable[[Session], None] | None = None,
        capped: bool = False,
    ) -> tuple[Session, Session]:
        """Change a live session's label, metadata (replaced whole) or timeouts; (before, after).

        The limits are those of :meth:`create_session` (``capped`` too: the timeouts sent are
        held to :meth:`check_ceilings`). The change counts as activity, and
        the deadline is computed again from the new timeouts; a max age the session has
        already outlived is refused (close the session to end it now). ``confirm`` runs
        before the change commits: if it raises, nothing changes.
        """
        return sessions.update(
            self.context,
            session_id,
            label=label,
            metadata=metadata,
            idle_timeout_s=idle_timeout_s,
            max_age_s=max_age_s,
            confirm=confirm,
            capped=capped,
        )

    def list_sessions(self, cursor: str | None = None, limit: int = 100) -> Page[Session]:
        """Every session (live or not), in ID order."""
        page = self.list_sessions_with_leases(cursor, limit)
        return Page([session for session, _ in page.items], page.next_cursor)

    def list_sessions_with_leases(
        self, cursor: str | None = None, limit: int = 100
    ) -> Page[tuple[Session, int]]:
        """Every session (live or not) with its number of valid leases."""
        return sessions.list_with_leases(self.context, cursor, limit)

    def inspect_session(self, session_id: str) -> tuple[Session, int, list[Artifact]]:
        """An operator's view of a session, live or past its deadline: the session, its number
        of valid leases, and its first artifacts. NotFound once it is gone."""
        return sessions.inspect(self.context, session_id)

    def totals(self) -> tuple[int, int, int]:
        """(sessions, ready artifacts, their bytes), over the whole store."""
        return self.catalog.totals()

    def close_session(self, session_id: str, *, force: bool = False) -> CloseReport:
        """Close now: mark closing, sweep the bytes, drop the records.

        A session that a valid lease protects is a Conflict unless ``force``, which releases
        its leases.
        """
        started = time.perf_counter()
        if not ids.SESSION_ID_RE.fullmatch(session_id):
            raise _session_not_found(session_id)
        if self.volume.low_space() is not None and self.catalog.get_session(session_id) is not None:
            # A close frees space, but on a full volume the database needs room to record it.
            self.volume.release_reserve()
        before = self.catalog.begin_close(session_id, self.clock.now(), force=force)
        if before is None:
            raise _session_not_found(session_id)
        told = (before.artifact_count, before.total_bytes)
        remove_session(self.context, session_id, "close", self.clock.now(), told=told)
        return CloseReport(
            closed=True,
            duration_s=round(time.perf_counter() - started, 6),
            artifact_count=before.artifact_count,
            deleted_bytes=before.total_bytes,
            storage_removed=True,
        )

    def recover(self) -> tuple[int, int]:
        """Finish what a crash interrupted: closing sessions and deleting artifacts.

        Items whose bytes will not go are logged and left for the next run or cleanup."""
        done = recover(self.context)
        return done.closed, done.deleted

    # -- artifacts ------------------------------------------------------------------------

    def begin_upload(
        self,
        session_id: str,
        *,
        name: str,
        kind: str = "input",
        content_type: str | None = None,
        storage: StorageClass | str | None = None,
        expires_in_s: int | None = None,
        declared_size: int | None = None,
        producer: str | None = None,
        key: UploadKey | None = None,
    ) -> Upload:
        """Start an artifact: validates everything up front, so a bad request stores nothing.

        With ``key`` (an Idempotency-Key, see :meth:`reserve_key`) the commit records the
        key's answer, or, for a retry of an answered upload, raises Replayed (or
        IdempotencyKeyReused for other bytes or metadata) and keeps nothing."""
        return uploads.begin_upload(
            self.context,
            session_id,
            name=name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            declared_size=declared_size,
            producer=producer,
            key=key,
        )

    def put_artifact(
        self,
        session_id: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        name: str,
        kind: str = "input",
        content_type: str | None = None,
        storage: StorageClass | str | None = None,
        expires_in_s: int | None = None,
        sha256: str | None = None,
        producer: str | None = None,
        chunk_size: int = 1024 * 1024,
        key: UploadKey | None = None,
    ) -> Artifact:
        """Store an artifact from bytes, a binary file, or an iterable of chunks (streamed);
        ``key`` as for :meth:`begin_upload`."""
        return uploads.put(
            self.context,
            session_id,
            data,
            name=name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            sha256=sha256,
            producer=producer,
            chunk_size=chunk_size,
            key=key,
        )

    def get_artifact(self, session_id: str, artifact_id: str) -> Artifact:
        return artifacts.get(self.context, session_id, artifact_id)

    def list_artifacts(
        self,
        session_id: str,
        *,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Artifact]:
        return artifacts.list_artifacts(self.context, session_id, kind, cursor, limit)

    def open_artifact(self, session_id: str, artifact_id: str) -> tuple[Artifact, BinaryIO]:
        artifact = self.get_artifact(session_id, artifact_id)
        return artifact, self.open_blob(artifact)

    def open_blob(self, artifact: Artifact) -> BinaryIO:
        """The bytes of an artifact already looked up and authorised (no further reads).

        ArtifactCorrupt for one that verification flagged: wrong bytes are never handed out.
        """
        return artifacts.open_blob(self.context, artifact)

    def open_artifact_range(self, artifact: Artifact, start: int, end: int) -> BinaryIO:
        """Bytes ``start`` to ``end`` inclusive of an artifact already looked up and authorised.

        Reads only that range where the blob store can; otherwise skips to ``start``.
        """
        return artifacts.open_range(self.context, self._ranged, artifact, start, end)

    def read_artifact(self, session_id: str, artifact_id: str) -> bytes:
        """The whole artifact in memory, hash checked: for small ones; stream big ones with
        open_artifact or iter_verified."""
        return b"".join(self.iter_verified(self.get_artifact(session_id, artifact_id)))

    def artifact_path(self, session_id: str, artifact_id: str) -> Path | None:
        """A local file path for zero-copy serving, when the blob store has one."""
        return artifacts.local_path(self._local_paths, session_id, artifact_id)

    def delete_artifact(self, session_id: str, artifact_id: str) -> Artifact:
        return artifacts.delete(self.context, session_id, artifact_id)

    def retain_artifact(
        self, session_id: str, artifact_id: str, until: datetime | None
    ) -> Artifact:
        """Keep an artifact past expiry and result retention until ``until`` (None: stop)."""
        return artifacts.retain(self.context, session_id, artifact_id, until)

    # -- tasks ----------------------------------------------------------------------------

    @property
    def processors(self) -> Registry:
        """The processors the settings enable (ProcessorUnavailable if one cannot load)."""
        return self._processors.registry

    def list_processors(self) -> list[ProcessorInfo]:
        """Each enabled processor with its description and its params' JSON schema."""
        return self.processors.describe()

    def get_processor_info(self, name: str) -> ProcessorInfo:
        """One enabled processor; NotFound, listing the enabled ones, for any other name."""
        return self.processors.describe_one(name)

    def submit_task(
        self,
        session_id: str,
        processor: str,
        inputs: Sequence[str | tuple[str, str]] = (),
        params: Mapping[str, Any] | None = None,
        *,
        credentials: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
        idempotency: Completion[Task] | None = None,
    ) -> Task:
        """Queue a task; it holds a lease on its session and inputs until it ends.

        ``inputs`` are artifact IDs of the session, or (session ID, artifact ID) pairs naming
        reference data in another session; ``credentials`` proves access to each such session
        (its token or an admin key, by session ID). Params are validated now, by the
        processor's model: a task never fails later for a malformed request.
        """
        return tasks.submit(
            self.context,
            self._processors,
            self._activity,
            session_id,
            processor,
            inputs,
            params,
            credentials,
            max_attempts,
            idempotency,
        )

    def get_task(self, session_id: str, task_id: str) -> Task:
        return tasks.get(self.context, session_id, task_id)

    def list_tasks(
        self,
        session_id: str,
        *,
        state: TaskState | str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Task]:
        return tasks.list_tasks(self.context, session_id, state, cursor, limit)

    def cancel_task(self, session_id: str, task_id: str) -> Task:
        """Cancel a pending or running task now; its outputs go, its leases are released.

        A running attempt learns it at its next heartbeat; nothing it does after counts.
        """
        task, dropped = tasks.cancel(self.context, session_id, task_id)
        self._remove_outputs(dropped)
        return task
