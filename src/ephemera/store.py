"""The library API: sessions and artifacts over a catalog (metadata) and a blob store (bytes).

State machines, and why each step is where it is:

Upload (guarantee 3, "no dangling record")::

    (none) --insert--> pending --bytes staged, fsynced--> [commit: in one write transaction
    holding the session row: rename bytes into place, then mark ready] --> ready

    A crash before the commit transaction leaves a pending record (invisible; removed by
    orphan reconciliation after the grace period) and staged bytes (likewise). A crash inside
    it leaves committed bytes with a pending record: still invisible, still reconciled.

Close (guarantee 4, "no leak")::

    open --mark--> closing --remove the session's prefix in one sweep--> --drop records--> gone

    From ``closing`` on nothing can be added (uploads commit only into an open session). A
    crash after the mark leaves the session ``closing``; ``recover()`` (run at start-up) and
    the cleanup engine finish it. ``close_session`` returns only after the sweep succeeded.

Artifact delete::

    ready --mark--> deleting --remove bytes--> --drop record--> gone   (each step idempotent)
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final

from ephemera import ids
from ephemera.blobs import (
    BlobStore,
    BlobWriter,
    CreatesContainer,
    LocalPaths,
    RangedReads,
    artifact_key,
    open_blob_store,
)
from ephemera.catalog import RESULT_KINDS, Catalog, task_producer
from ephemera.cleanup import (
    CleanupReport,
    CleanupRequest,
    Progress,
    cleanup_stats,
    run_cleanup,
)
from ephemera.clock import Clock, SystemClock
from ephemera.config import Settings
from ephemera.context import Context
from ephemera.errors import (
    ChecksumMismatch,
    Conflict,
    EphemeraError,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    SessionUnreachable,
    StorageError,
    TooLarge,
    Unauthenticated,
)
from ephemera.hooks import ArtifactDeleted, Hooks, Webhook
from ephemera.integrity import (
    ProgressFn,
    Repair,
    VerifyReport,
    VerifyRequest,
    refuse_flagged,
    run_verify,
    verified_chunks,
)
from ephemera.jsonvalues import check_json
from ephemera.metrics import Metrics
from ephemera.models import (
    MAX_TIMEOUT_S,
    AdminKey,
    Artifact,
    AuditEntry,
    Claim,
    CloseReport,
    CreatedSession,
    KeyRole,
    Lease,
    Page,
    Session,
    SessionState,
    StorageClass,
    Task,
    TaskInput,
    TaskState,
    session_deadline,
)
from ephemera.processors import ProcessorInfo, Registry
from ephemera.recovery import recover
from ephemera.removal import remove_artifacts, remove_session
from ephemera.volume import Volume


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


log = logging.getLogger("ephemera.store")

DEFAULT: Final = _Default()
"""Use the configured default (as opposed to ``None``, which means "never")."""


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
"""Leave as it is (as opposed to ``None``, which clears or means "never")."""

CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_PAGE = 1000
MAX_TASK_INPUTS = 1000
MAX_TASK_JSON_BYTES = 1024 * 1024
LABEL_MAX = 200
METADATA_MAX_BYTES = 64 * 1024


def _session_not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id} not found")


def _session_unreachable(session_id: str) -> SessionUnreachable:
    return SessionUnreachable(f"session {session_id} not found")


def check_content_type(value: str) -> str:
    base = value.split(";", 1)[0].strip().lower()
    if len(value) > 255 or not CONTENT_TYPE_RE.fullmatch(base):
        raise InvalidInput(f"invalid content type {value[:80]!r}")
    return base


def check_sha256(value: str) -> str:
    value = value.strip().lower()
    if not SHA256_RE.fullmatch(value):
        raise InvalidInput("sha256 must be 64 hexadecimal characters")
    return value


@dataclass(frozen=True, slots=True)
class NewOutput:
    """A task output held in memory, for :meth:`Store.put_task_outputs`."""

    name: str
    data: bytes = field(repr=False)
    kind: str = "output"
    content_type: str | None = None
    # Chosen by the caller when it must name the artifact before it is stored.
    artifact_id: str | None = None


class Upload:
    """One artifact being written: ``write`` chunks, then ``commit`` (or ``abort``).

    Thread-confined: one thread writes at a time (the HTTP layer hands chunks to a worker
    thread in order). Used as a context manager it aborts on any exception.
    """

    def __init__(
        self,
        store: Store,
        session_id: str,
        artifact_id: str,
        writer: BlobWriter,
        values: dict[str, Any],
        started_at: datetime,
        claim: tuple[str, str] | None = None,
    ) -> None:
        self._store = store
        self._claim = claim
        self.session_id = session_id
        self.artifact_id = artifact_id
        self._writer = writer
        self._values = values
        self._started_at = started_at
        self._finished = False

    def amend(
        self,
        *,
        name: str,
        kind: str = "input",
        content_type: str | None = None,
        storage: StorageClass | str | None = None,
        expires_in_s: int | None = None,
    ) -> None:
        """Replace the artifact's metadata before commit (for metadata that trails the bytes)."""
        try:
            producer = self._values.get("producer")
            self._values = self._store._artifact_values(
                name, kind, content_type, storage, expires_in_s, self._started_at
            )
            if producer is not None:
                self._values["producer"] = producer
        except BaseException:
            self.abort()
            raise

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes) -> None:
        limit = self._store.settings.max_upload_bytes
        if self._writer.size + len(data) > limit:
            self.abort()
            raise TooLarge(f"artifact exceeds the upload limit of {limit} bytes")
        self._writer.write(data)

    def commit(self, expected_sha256: str | None = None) -> Artifact:
        if self._finished:
            raise InvalidInput("upload already finished")
        digest = self._writer.sha256()
        if expected_sha256 is not None and check_sha256(expected_sha256) != digest:
            self.abort()
            raise ChecksumMismatch(
                f"sha256 mismatch: client sent {expected_sha256.lower()}, received {digest}"
            )
        self._finished = True
        store = self._store
        try:
            # The slow part of durability happens here, outside the commit transaction.
            self._writer.sync()
        except BaseException:
            store._discard_upload(self.session_id, self.artifact_id, self._writer)
            raise
        values = {
            **self._values,
            "size": self._writer.size,
            "sha256": digest,
            "ready_at": store.clock.now(),
        }
        try:
            artifact = store.catalog.finalize_artifact(
                self.artifact_id,
                self.session_id,
                values,
                store.settings.session_quota_bytes,
                self._writer.commit,
                self._claim,
            )
        except BaseException:
            store._discard_upload(self.session_id, self.artifact_id, self._writer)
            raise
        return artifact

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            self._store._discard_upload(self.session_id, self.artifact_id, self._writer)

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


class Store:
    """Sessions and artifacts. Thread-safe: every call takes its own database connection."""

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
        # Optional capabilities of the blob store, decided once.
        self._local_paths = blobs if isinstance(blobs, LocalPaths) else None
        self._ranged = blobs if isinstance(blobs, RangedReads) else None
        self.volume = Volume(self.settings)
        self._activity_unrecorded = False  # a full volume refused the last activity write
        self.hooks = Hooks()
        self.context = Context(catalog, blobs, self.settings, self.clock, self.hooks, self.volume)
        self.metrics = Metrics(catalog, self.volume)
        self._processors: Registry | None = None
        self._processors_lock = threading.Lock()
        # Set on every submission, so this process's idle workers claim at once.
        self.tasks_queued = threading.Event()
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
        self.blobs.check()

    # -- credentials ----------------------------------------------------------------------

    def authenticate(self, session_id: str, credential: str) -> str | None:
        """Check that ``credential`` opens this live session, and record activity.

        Returns the admin key's name when an admin key was used (for the audit log).

        With a session token, a wrong token, an unknown or malformed ID, and an expired session
        all raise the same SessionUnreachable (a NotFound), so a caller cannot tell them apart;
        with an admin key a session that is not there is a plain NotFound. A key is judged
        as a key, before the session is looked at: an unknown, revoked or expired one is
        Unauthenticated, a worker or client key Forbidden.
        """
        key = self.resolve_key(credential)
        if key is not None and key.role != KeyRole.ADMIN:
            raise Forbidden(f"a {key.role} key does not open sessions")
        # With an admin key a missing session is only that; with a token it is one of the
        # indistinguishable failures of authentication.
        missing = _session_not_found if key is not None else _session_unreachable
        if not ids.SESSION_ID_RE.fullmatch(session_id):
            raise missing(session_id)
        now = self.clock.now()
        row = self.catalog.session_with_liveness(session_id, now)
        if row is None:
            raise missing(session_id)
        if key is None and not ids.secret_matches(credential, row.token_hash):
            raise missing(session_id)
        if not row.live:
            raise missing(session_id)
        interval = timedelta(seconds=self.settings.activity_write_interval_s)
        if now - row.last_activity_at >= interval:
            expires_at = session_deadline(now, row.created_at, row.idle_timeout_s, row.max_age_s)
            self._record_activity(
                lambda: self.catalog.touch_session(session_id, now, expires_at, now - interval)
            )
        return None if key is None else key.name

    def resolve_key(self, credential: str) -> AdminKey | None:
        """The key ``credential`` is, with its role; None if it is not a key (a session token).

        A credential with a key's prefix is only ever a key: unknown (never issued or revoked)
        or expired, it is Unauthenticated, never tried as a session token. Use is recorded at
        most every ``activity_write_interval_s``.
        """
        role = ids.key_role(credential)
        if role is None:
            return None
        key = self.catalog.find_key(ids.hash_secret(credential))
        if key is None or key.role != role:
            raise Unauthenticated("unknown or revoked key")
        now = self.clock.now()
        if key.expired(now):
            assert key.expires_at is not None
            raise Unauthenticated(f"this key expired at {key.expires_at.isoformat()}")
        interval = timedelta(seconds=self.settings.activity_write_interval_s)
        if key.last_used_at is None or now - key.last_used_at >= interval:
            self._record_activity(lambda: self.catalog.touch_key(key.name, now, now - interval))
        return key

    def _record_activity(self, write: Callable[[], None]) -> None:
        """Run a last-use or activity write, best effort on a full volume.

        The request goes on without it: it may be the one that frees space (a cleanup, a
        close) or need none (a download). Logged once until such a write succeeds again.
        """
        try:
            write()
        except InsufficientStorage as exc:
            if not self._activity_unrecorded:
                self._activity_unrecorded = True
                log.warning(
                    "activity and key use are not recorded until space is freed: %s",
                    exc.message,
                    extra={"action": "activity"},
                )
            return
        if self._activity_unrecorded:
            self._activity_unrecorded = False
            log.info("activity and key use are recorded again", extra={"action": "activity"})

    def create_admin_key(self, name: str) -> str:
        return self.create_key(name, KeyRole.ADMIN)

    def create_key(
        self,
        name: str,
        role: KeyRole | str = KeyRole.ADMIN,
        *,
        expires_in_s: float | None = None,
    ) -> str:
        """A new key of ``role`` (see :class:`KeyRole`), valid for ``expires_in_s`` or ever."""
        checked = _role(role)
        if expires_in_s is not None and not 1 <= expires_in_s <= MAX_TIMEOUT_S:
            raise InvalidInput("a key's expiry must be between 1 second and 10 years")
        now = self.clock.now()
        expires_at = None if expires_in_s is None else now + timedelta(seconds=expires_in_s)
        key = ids.new_key(checked)
        self.catalog.insert_admin_key(
            ids.check_admin_key_name(name), ids.hash_secret(key), now, checked, expires_at
        )
        return key

    def list_admin_keys(self) -> list[AdminKey]:
        return self.list_keys(KeyRole.ADMIN)

    def list_keys(self, role: KeyRole | str = KeyRole.ADMIN) -> list[AdminKey]:
        return self.catalog.list_admin_keys(_role(role))

    def revoke_admin_key(self, name: str) -> None:
        self.revoke_key(name, KeyRole.ADMIN)

    def revoke_key(self, name: str, role: KeyRole | str = KeyRole.ADMIN) -> None:
        if not self.catalog.delete_admin_key(name, _role(role)):
            raise NotFound(f"no {role} key named {name!r}")

    def has_admin_key(self) -> bool:
        return self.catalog.count_admin_keys() > 0

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        session_id: str | None = None,
        *,
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
        idle_timeout_s: int | _Default | None = DEFAULT,
        max_age_s: int | _Default | None = DEFAULT,
        confirm: Callable[[CreatedSession], None] | None = None,
        capped: bool = False,
    ) -> CreatedSession:
        """Create a session; a client-chosen ID of a live session is a Conflict.

        An ID whose earlier session is gone, expired or half-closed starts afresh: whatever
        is left of the earlier one is removed first, so the new session is empty.
        ``confirm`` runs before the creation commits (e.g. to render the answer that hands
        out the token): if it raises, nothing is created. ``capped`` (a caller without an
        admin key) holds the timeouts asked for to the operator's ceilings
        (:meth:`check_ceilings`); the configured defaults always apply.
        """
        if session_id is None:
            session_id = ids.new_uuid7()
        else:
            ids.check_session_id(session_id)
        label = _check_label(label)
        metadata = _check_metadata(metadata)
        idle = (
            self.settings.idle_timeout_s if isinstance(idle_timeout_s, _Default) else idle_timeout_s
        )
        max_age = self.settings.max_age_s if isinstance(max_age_s, _Default) else max_age_s
        idle = _check_timeout("idle_timeout_s", idle)
        max_age = _check_timeout("max_age_s", max_age)
        if capped:
            asked = {"idle_timeout_s": idle_timeout_s, "max_age_s": max_age_s}
            self.check_ceilings({k: v for k, v in asked.items() if not isinstance(v, _Default)})

        now = self.clock.now()
        if self.catalog.get_session_row(session_id) is not None:
            if self.catalog.is_live(session_id, now):
                raise Conflict(f"session {session_id} already exists")
            self._finish_close(session_id, force=False)
        token = ids.new_session_token()

        def confirmed(session: Session) -> None:
            if confirm is not None:
                confirm(CreatedSession(session, token))

        session = self.catalog.insert_session(
            {
                "id": session_id,
                "token_hash": ids.hash_secret(token),
                "label": label,
                "metadata": metadata,
                "state": SessionState.OPEN,
                "created_at": now,
                "last_activity_at": now,
                "idle_timeout_s": idle,
                "max_age_s": max_age,
                "expires_at": session_deadline(now, now, idle, max_age),
            },
            confirmed,
        )
        return CreatedSession(session, token)

    def check_ceilings(self, timeouts: Mapping[str, Any]) -> None:
        """Refuse timeouts beyond what a caller without an admin key may ask for.

        ``timeouts`` holds the ``idle_timeout_s`` and ``max_age_s`` asked for (either may be
        absent). The idle timeout must be at most ``max_idle_timeout_s`` ("never" is for admin
        keys); where ``max_age_s`` is configured, the max age must be at most that. Without
        these, a session's own token (or a client key) could make it live forever.
        """
        ceiling = self.settings.max_idle_timeout_s
        if "idle_timeout_s" in timeouts:
            idle = timeouts["idle_timeout_s"]
            if idle is None or idle > ceiling:
                raise InvalidInput(
                    f"idle_timeout_s must be at most {ceiling} (max_idle_timeout_s); "
                    "a longer one, or null (never), takes an admin key"
                )
        limit = self.settings.max_age_s
        if "max_age_s" in timeouts and limit is not None:
            max_age = timeouts["max_age_s"]
            if max_age is None or max_age > limit:
                raise InvalidInput(
                    f"max_age_s must be at most {limit} (the configured max_age_s); "
                    "a longer one, or null (never), takes an admin key"
                )

    def _require_live(self, session_id: str) -> None:
        if not self.catalog.is_live(session_id, self.clock.now()):
            raise _session_not_found(session_id)

    def get_session(self, session_id: str) -> Session:
        """The live session with its artifact count and bytes; NotFound if it is not live."""
        self._require_live(session_id)
        session = self.catalog.get_session(session_id)
        if session is None:
            raise _session_not_found(session_id)
        return session

    def update_session(
        self,
        session_id: str,
        *,
        label: str | _Unchanged | None = UNCHANGED,
        metadata: Mapping[str, Any] | _Unchanged = UNCHANGED,
        idle_timeout_s: int | _Unchanged | None = UNCHANGED,
        max_age_s: int | _Unchanged | None = UNCHANGED,
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
        if not ids.SESSION_ID_RE.fullmatch(session_id):
            raise _session_not_found(session_id)
        values: dict[str, Any] = {}
        if not isinstance(label, _Unchanged):
            values["label"] = _check_label(label)
        if not isinstance(metadata, _Unchanged):
            values["metadata"] = _check_metadata(metadata)
        if not isinstance(idle_timeout_s, _Unchanged):
            values["idle_timeout_s"] = _check_timeout("idle_timeout_s", idle_timeout_s)
        if not isinstance(max_age_s, _Unchanged):
            values["max_age_s"] = _check_timeout("max_age_s", max_age_s)
        if capped:
            self.check_ceilings(values)
        now = self.clock.now()

        def change(row: Any) -> dict[str, Any]:
            idle = values.get("idle_timeout_s", row.idle_timeout_s)
            max_age = values.get("max_age_s", row.max_age_s)
            if max_age is not None and row.created_at + timedelta(seconds=max_age) <= now:
                age = int((now - row.created_at).total_seconds())
                raise InvalidInput(
                    f"max_age_s {max_age} has already passed (the session is {age} s old): "
                    "close the session to end it now"
                )
            deadline = session_deadline(now, row.created_at, idle, max_age)
            return {**values, "last_activity_at": now, "expires_at": deadline}

        changed = self.catalog.update_session(session_id, now, change, confirm)
        if changed is None:
            raise _session_not_found(session_id)
        return changed

    def list_sessions(self, cursor: str | None = None, limit: int = 100) -> Page[Session]:
        """Every session (live or not), in ID order."""
        page = self.list_sessions_with_leases(cursor, limit)
        return Page([session for session, _ in page.items], page.next_cursor)

    def list_sessions_with_leases(
        self, cursor: str | None = None, limit: int = 100
    ) -> Page[tuple[Session, int]]:
        """Every session (live or not) with its number of valid leases."""
        limit = _check_limit(limit)
        rows = self.catalog.list_sessions_with_leases(cursor, limit + 1, self.clock.now())
        if len(rows) > limit:
            return Page(rows[:limit], rows[limit - 1][0].id)
        return Page(rows, None)

    def inspect_session(self, session_id: str) -> tuple[Session, int, list[Artifact]]:
        """An operator's view of a session, live or past its deadline: the session, its number
        of valid leases, and its first artifacts. NotFound once it is gone."""
        session = self.catalog.get_session(session_id)
        if session is None:
            raise _session_not_found(session_id)
        now = self.clock.now()
        leases = sum(lease.is_valid(now) for lease in self.catalog.list_leases(session_id))
        artifacts = self.catalog.list_artifacts(session_id, None, None, MAX_PAGE)
        return session, leases, artifacts

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
        remove_session(self.context, session_id, "close", self.clock.now())
        return CloseReport(
            closed=True,
            duration_s=round(time.perf_counter() - started, 6),
            artifact_count=before.artifact_count,
            deleted_bytes=before.total_bytes,
            storage_removed=True,
        )

    def _finish_close(self, session_id: str, *, force: bool = True) -> None:
        self.catalog.begin_close(session_id, self.clock.now(), force=force)
        remove_session(self.context, session_id, "close", self.clock.now())

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
        _claim: tuple[str, str] | None = None,
    ) -> Upload:
        """Start an artifact: validates everything up front, so a bad request stores nothing."""
        now = self.clock.now()
        values = self._artifact_values(name, kind, content_type, storage, expires_in_s, now)
        if producer is not None:
            values["producer"] = ids.check_producer(producer)
        if _claim is not None:
            values["producer"] = task_producer(_claim[0])
        if declared_size is not None and declared_size > self.settings.max_upload_bytes:
            raise TooLarge(
                f"artifact exceeds the upload limit of {self.settings.max_upload_bytes} bytes"
            )
        self.volume.check_room()
        artifact_id = ids.new_uuid7()
        if not self.catalog.insert_pending_artifact(
            {"id": artifact_id, "session_id": session_id, "created_at": now, **values}
        ):
            raise _session_not_found(session_id)
        try:
            writer = self.blobs.writer(artifact_key(session_id, artifact_id))
        except BaseException:
            self.catalog.delete_pending_artifact(artifact_id)
            raise
        return Upload(self, session_id, artifact_id, writer, values, now, _claim)

    def _artifact_values(
        self,
        name: str,
        kind: str,
        content_type: str | None,
        storage: StorageClass | str | None,
        expires_in_s: int | None,
        now: datetime,
    ) -> dict[str, Any]:
        ids.check_file_name(name)
        ids.check_kind(kind)
        if not content_type:
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        content_type = check_content_type(content_type)
        try:
            storage_class = StorageClass(storage) if storage else None
        except ValueError:
            raise InvalidInput("storage must be 'persistent' or 'temporary'") from None
        if expires_in_s is not None:
            if not (1 <= expires_in_s <= MAX_TIMEOUT_S):
                raise InvalidInput(f"expires_in_s must be between 1 and {MAX_TIMEOUT_S}")
            if storage_class is StorageClass.PERSISTENT:
                raise InvalidInput("expires_in_s applies to temporary artifacts only")
            storage_class = StorageClass.TEMPORARY
        storage_class = storage_class or StorageClass.PERSISTENT
        expires_at = None
        if storage_class is StorageClass.TEMPORARY:
            expires_at = now + timedelta(seconds=expires_in_s or self.settings.temporary_ttl_s)
        return {
            "name": name,
            "kind": kind,
            "content_type": content_type,
            "storage_class": storage_class,
            "expires_at": expires_at,
        }

    def _discard_upload(self, session_id: str, artifact_id: str, writer: BlobWriter) -> None:
        # Best effort: whatever is left is found by orphan reconciliation.
        writer.abort()
        try:
            self.catalog.delete_pending_artifact(artifact_id)
            if self.catalog.get_artifact(session_id, artifact_id) is None:
                self.blobs.delete(artifact_key(session_id, artifact_id))
        except StorageError:
            pass

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
    ) -> Artifact:
        """Store an artifact from bytes, a binary file, or an iterable of chunks (streamed)."""
        if sha256 is not None:
            check_sha256(sha256)
        upload = self.begin_upload(
            session_id,
            name=name,
            kind=kind,
            content_type=content_type,
            storage=storage,
            expires_in_s=expires_in_s,
            declared_size=len(data) if isinstance(data, bytes) else None,
            producer=producer,
        )
        with upload:
            for chunk in _chunks(data, chunk_size):
                upload.write(chunk)
            return upload.commit(sha256)

    def get_artifact(self, session_id: str, artifact_id: str) -> Artifact:
        self._require_live(session_id)
        artifact = self.catalog.get_artifact(session_id, artifact_id)
        if artifact is None:
            raise NotFound(f"artifact {artifact_id} not found")
        return artifact

    def list_artifacts(
        self,
        session_id: str,
        *,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Artifact]:
        self._require_live(session_id)
        limit = _check_limit(limit)
        if kind is not None:
            ids.check_kind(kind)
        if cursor is not None and not ids.is_artifact_id(cursor):
            raise InvalidInput("invalid cursor")
        items = self.catalog.list_artifacts(session_id, kind, cursor, limit + 1)
        return _page(items, limit)

    def open_artifact(self, session_id: str, artifact_id: str) -> tuple[Artifact, BinaryIO]:
        artifact = self.get_artifact(session_id, artifact_id)
        return artifact, self.open_blob(artifact)

    def open_blob(self, artifact: Artifact) -> BinaryIO:
        """The bytes of an artifact already looked up and authorised (no further reads).

        ArtifactCorrupt for one that verification flagged: wrong bytes are never handed out.
        """
        refuse_flagged(artifact)
        return self.blobs.open(artifact_key(artifact.session_id, artifact.id))

    def open_artifact_range(self, artifact: Artifact, start: int, end: int) -> BinaryIO:
        """Bytes ``start`` to ``end`` inclusive of an artifact already looked up and authorised.

        Reads only that range where the blob store can; otherwise skips to ``start``.
        """
        refuse_flagged(artifact)
        if self._ranged is not None:
            return self._ranged.open_range(
                artifact_key(artifact.session_id, artifact.id), start, end
            )
        stream = self.open_blob(artifact)
        try:
            while start > 0 and (skipped := len(stream.read(min(start, 1024 * 1024)))):
                start -= skipped
        except BaseException:
            stream.close()
            raise
        return stream

    def read_artifact(self, session_id: str, artifact_id: str) -> bytes:
        """The whole artifact in memory, hash checked: for small ones; stream big ones with
        open_artifact or iter_verified."""
        return b"".join(self.iter_verified(self.get_artifact(session_id, artifact_id)))

    def artifact_path(self, session_id: str, artifact_id: str) -> Path | None:
        """A local file path for zero-copy serving, when the blob store has one."""
        if self._local_paths is None:
            return None
        return self._local_paths.local_path(artifact_key(session_id, artifact_id))

    def delete_artifact(self, session_id: str, artifact_id: str) -> Artifact:
        self._require_live(session_id)
        artifact = self.catalog.mark_artifact_deleting(session_id, artifact_id, self.clock.now())
        if artifact is None:
            raise NotFound(f"artifact {artifact_id} not found")
        self.blobs.delete(artifact_key(session_id, artifact_id))
        self.catalog.drop_artifact(artifact_id)
        self.hooks.artifact_deleted(
            ArtifactDeleted(session_id, artifact_id, artifact.size, "delete", self.clock.now())
        )
        return artifact

    def retain_artifact(
        self, session_id: str, artifact_id: str, until: datetime | None
    ) -> Artifact:
        """Keep an artifact past expiry and result retention until ``until`` (None: stop)."""
        self._require_live(session_id)
        if until is not None:
            if until.tzinfo is None:
                raise InvalidInput("retain_until must carry a time zone")
            try:
                until = until.astimezone(UTC)
            except OverflowError:  # e.g. 0001-01-01T00:00+00:01 is before year 1 in UTC
                raise InvalidInput("retain_until is outside the years 1 to 9999 in UTC") from None
        artifact = self.catalog.set_retention(session_id, artifact_id, until)
        if artifact is None:
            raise NotFound(f"artifact {artifact_id} not found")
        return artifact

    # -- leases ---------------------------------------------------------------------------

    def take_lease(
        self,
        session_id: str,
        *,
        ttl_s: int | None = None,
        holder: str = "",
        artifact_ids: Sequence[str] = (),
    ) -> Lease:
        """Protect a session (no ``artifact_ids``) or the named artifacts from any cleanup."""
        ttl = self._lease_ttl(ttl_s)
        if len(holder) > 200:
            raise InvalidInput("holder must be at most 200 characters")
        names = tuple(dict.fromkeys(artifact_ids))
        if len(names) > 1000:
            raise InvalidInput("a lease names at most 1000 artifacts")
        for name in names:
            if not ids.is_artifact_id(name):
                raise NotFound(f"artifact {name[:40]} not found")
        self._require_live(session_id)
        now = self.clock.now()
        lease = Lease(
            id=ids.new_uuid7(),
            session_id=session_id,
            holder=holder,
            artifact_ids=names,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
        )
        self.catalog.insert_lease(lease)
        return lease

    def renew_lease(self, session_id: str, lease_id: str, *, ttl_s: int | None = None) -> Lease:
        """Extend a valid lease; an expired one is a Conflict (it protected nothing meanwhile)."""
        ttl = self._lease_ttl(ttl_s)
        self._require_live(session_id)
        now = self.clock.now()
        lease = self.catalog.renew_lease(session_id, lease_id, now, now + timedelta(seconds=ttl))
        if lease is None:
            if self.catalog.get_lease(session_id, lease_id) is None:
                raise NotFound(f"lease {lease_id} not found")
            raise Conflict(f"lease {lease_id} has expired; take a new one")
        return lease

    def release_lease(self, session_id: str, lease_id: str) -> None:
        self._require_live(session_id)
        if not self.catalog.delete_lease(session_id, lease_id):
            raise NotFound(f"lease {lease_id} not found")

    def list_leases(self, session_id: str) -> list[Lease]:
        self._require_live(session_id)
        return self.catalog.list_leases(session_id)

    def get_lease(self, session_id: str, lease_id: str) -> Lease:
        self._require_live(session_id)
        lease = self.catalog.get_lease(session_id, lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id} not found")
        return lease

    def _lease_ttl(self, ttl_s: int | None) -> int:
        ttl = self.settings.lease_default_ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= self.settings.lease_max_ttl_s:
            raise InvalidInput(f"ttl_s must be between 1 and {self.settings.lease_max_ttl_s}")
        return ttl

    # -- tasks ----------------------------------------------------------------------------

    @property
    def processors(self) -> Registry:
        """The processors the settings enable (ProcessorUnavailable if one cannot load)."""
        with self._processors_lock:
            if self._processors is None:
                self._processors = Registry.load(
                    self.settings.processors, external=self.settings.external_processors
                )
            return self._processors

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
    ) -> Task:
        """Queue a task; it holds a lease on its session and inputs until it ends.

        ``inputs`` are artifact IDs of the session, or (session ID, artifact ID) pairs naming
        reference data in another session; ``credentials`` proves access to each such session
        (its token or an admin key, by session ID). Params are validated now, by the
        processor's model: a task never fails later for a malformed request.
        """
        self._require_live(session_id)
        refs = [_task_input(session_id, item) for item in inputs]
        if len(refs) > MAX_TASK_INPUTS:
            raise InvalidInput(f"a task takes at most {MAX_TASK_INPUTS} inputs")
        for other in sorted({r.session_id for r in refs} - {session_id}):
            self.authenticate(other, (credentials or {}).get(other, ""))
        attempts = self.settings.task_max_attempts if max_attempts is None else max_attempts
        if not 1 <= attempts <= 100:
            raise InvalidInput("max_attempts must be between 1 and 100")
        now = self.clock.now()
        artifacts = self.catalog.task_inputs(refs, now)
        for artifact in artifacts:
            refuse_flagged(artifact)
        checked = dict(params or {})
        if processor in self.settings.external_processors:
            pass  # run by an external worker, which checks its own params
        else:
            checked = self.processors.validate(processor, checked, artifacts).model_dump(
                mode="json"
            )
        checked = check_json(checked, "params", max_bytes=MAX_TASK_JSON_BYTES)
        task = self.catalog.insert_task(
            {
                "id": ids.new_uuid7(),
                "session_id": session_id,
                "processor": processor,
                "params": checked,
                "inputs": [[r.session_id, r.artifact_id] for r in refs],
                "state": TaskState.PENDING,
                "progress_done": 0,
                "outputs": [],
                "attempts": 0,
                "max_attempts": attempts,
                "not_before": now,
                "created_at": now,
            },
            refs,
        )
        self.tasks_queued.set()
        return task

    def get_task(self, session_id: str, task_id: str) -> Task:
        self._require_live(session_id)
        task = self.catalog.get_task(session_id, task_id) if ids.is_task_id(task_id) else None
        if task is None:
            raise NotFound(f"task {task_id[:40]} not found")
        return task

    def list_tasks(
        self,
        session_id: str,
        *,
        state: TaskState | str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Task]:
        self._require_live(session_id)
        limit = _check_limit(limit)
        try:
            wanted = TaskState(state) if state is not None else None
        except ValueError:
            raise InvalidInput(f"unknown task state {str(state)[:20]!r}") from None
        if cursor is not None and not ids.is_task_id(cursor):
            raise InvalidInput("invalid cursor")
        return _page(self.catalog.list_tasks(session_id, wanted, cursor, limit + 1), limit)

    def cancel_task(self, session_id: str, task_id: str) -> Task:
        """Cancel a pending or running task now; its outputs go, its leases are released.

        A running attempt learns it at its next heartbeat; nothing it does after counts.
        """
        self._require_live(session_id)
        done = (
            self.catalog.cancel_task(session_id, task_id, self.clock.now())
            if ids.is_task_id(task_id)
            else None
        )
        if done is None:
            raise NotFound(f"task {task_id[:40]} not found")
        task, dropped = done
        self._remove_outputs(dropped)
        return task

    # -- tasks: the worker's side ---------------------------------------------------------

    def claim_task(
        self, worker: str, processors: Sequence[str] | None = None, *, ttl_s: float | None = None
    ) -> Claim | None:
        """Take the oldest runnable task of these processors (default: the registry's).

        The claim lasts ``ttl_s`` (default ``task_claim_ttl_s``) and is kept by heartbeats.
        A claim that runs out means the worker is lost: the task is retried, up to its
        ``max_attempts``, then fails with the reason.
        """
        if not worker or len(worker) > 200 or not worker.isprintable():
            raise InvalidInput("worker must be 1-200 printable characters")
        names = list(self.processors) if processors is None else list(processors)
        if not names:
            return None
        now = self.clock.now()
        claim, dropped = self.catalog.claim_task(
            names,
            worker,
            ids.new_claim_id(),
            now,
            now + timedelta(seconds=self._claim_ttl(ttl_s)),
            self._retry_delay,
        )
        self._remove_outputs(dropped)
        return claim

    def heartbeat_task(
        self,
        task_id: str,
        claim_id: str,
        *,
        progress: tuple[int, int | None] | None = None,
        ttl_s: float | None = None,
    ) -> datetime:
        """Renew a claim (and report progress); Conflict once the claim is no longer held."""
        if progress is not None:
            done, total = progress
            if done < 0 or (total is not None and not 0 <= done <= total):
                raise InvalidInput("progress must satisfy 0 <= done <= total")
        until = self.clock.now() + timedelta(seconds=self._claim_ttl(ttl_s))
        if not self.catalog.heartbeat_task(task_id, claim_id, until, progress):
            raise _claim_lost(task_id)
        return until

    def complete_task(
        self, task_id: str, claim_id: str, result: Mapping[str, Any] | None = None
    ) -> Task:
        """Succeed: the outputs written under this claim become the task's outputs."""
        value = check_json(dict(result or {}), "result", max_bytes=MAX_TASK_JSON_BYTES)
        task, _ = self.catalog.finish_task(task_id, claim_id, self.clock.now(), result=value)
        return task

    def fail_task(self, task_id: str, claim_id: str, error: str, *, retry: bool = False) -> Task:
        """Fail this attempt; with ``retry`` the task is queued again while attempts remain."""
        task, dropped = self.catalog.finish_task(
            task_id,
            claim_id,
            self.clock.now(),
            error=error or "failed",
            retry_delay=self._retry_delay if retry else None,
        )
        self._remove_outputs(dropped)
        return task

    def _claimed_session(self, task_id: str, claim_id: str) -> str:
        found = self.catalog.claimed_session(task_id, claim_id) if ids.is_task_id(task_id) else None
        if found is None:
            raise _claim_lost(task_id)
        return found

    def task_input(self, task_id: str, claim_id: str, artifact_id: str) -> Artifact:
        """One input of a claimed task (reference data included), while the claim holds."""
        inputs = self.catalog.claimed_inputs(task_id, claim_id) if ids.is_task_id(task_id) else None
        if inputs is None:
            raise _claim_lost(task_id)
        for ref in inputs:
            if ref.artifact_id == artifact_id:
                artifact = self.catalog.get_artifact(ref.session_id, artifact_id)
                if artifact is None:
                    break
                refuse_flagged(artifact)
                return artifact
        raise NotFound(f"artifact {artifact_id[:40]} is not an input of task {task_id}")

    def open_task_input(
        self, task_id: str, claim_id: str, artifact_id: str
    ) -> tuple[Artifact, BinaryIO]:
        artifact = self.task_input(task_id, claim_id, artifact_id)
        return artifact, self.open_blob(artifact)

    def check_output(
        self, name: str, kind: str = "output", content_type: str | None = None
    ) -> dict[str, Any]:
        """The stored metadata of a task output with this name, kind and type; or InvalidInput."""
        if kind not in RESULT_KINDS:
            raise InvalidInput(f"a task output's kind is one of {', '.join(RESULT_KINDS)}")
        return self._artifact_values(name, kind, content_type, None, None, self.clock.now())

    def begin_task_output(
        self,
        task_id: str,
        claim_id: str,
        *,
        name: str,
        kind: str = "output",
        content_type: str | None = None,
        declared_size: int | None = None,
    ) -> Upload:
        """Start an output of a claimed task (streamed); it commits only while the claim holds."""
        self.check_output(name, kind, content_type)
        return self.begin_upload(
            self._claimed_session(task_id, claim_id),
            name=name,
            kind=kind,
            content_type=content_type,
            declared_size=declared_size,
            _claim=(task_id, claim_id),
        )

    def put_task_output(
        self,
        task_id: str,
        claim_id: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        name: str,
        kind: str = "output",
        content_type: str | None = None,
        chunk_size: int = 1024 * 1024,
    ) -> Artifact:
        if isinstance(data, bytes):
            (artifact,) = self.put_task_outputs(
                task_id, claim_id, [NewOutput(name, data, kind, content_type)]
            )
            return artifact
        upload = self.begin_task_output(
            task_id, claim_id, name=name, kind=kind, content_type=content_type
        )
        with upload:
            for chunk in _chunks(data, chunk_size):
                upload.write(chunk)
            return upload.commit()

    def put_task_outputs(
        self, task_id: str, claim_id: str, outputs: Sequence[NewOutput]
    ) -> list[Artifact]:
        """Store outputs held in memory: bytes staged and synced, then one transaction for all.

        Each output is still all or nothing (ready only with durable bytes); a batch costs
        one commit instead of two per output.
        """
        if not outputs:
            return []
        session_id = self._claimed_session(task_id, claim_id)
        self.volume.check_room()
        now = self.clock.now()
        rows: list[dict[str, Any]] = []
        writers: list[BlobWriter] = []
        keys: list[str] = []
        try:
            for out in outputs:
                values = self.check_output(out.name, out.kind, out.content_type)
                if len(out.data) > self.settings.max_upload_bytes:
                    raise TooLarge(f"output {out.name!r} exceeds the upload limit")
                artifact_id = out.artifact_id or ids.new_uuid7()
                if not ids.is_artifact_id(artifact_id):
                    raise InvalidInput(f"invalid artifact ID {artifact_id[:40]!r}")
                keys.append(artifact_key(session_id, artifact_id))
                writer = self.blobs.writer(keys[-1])
                writers.append(writer)
                writer.write(out.data)
                writer.sync()
                rows.append(
                    {
                        **values,
                        "id": artifact_id,
                        "producer": task_producer(task_id),
                        "size": writer.size,
                        "sha256": writer.sha256(),
                        "created_at": now,
                        "ready_at": now,
                    }
                )
            return self.catalog.insert_ready_artifacts(
                session_id,
                rows,
                self.settings.session_quota_bytes,
                [w.commit for w in writers],
                (task_id, claim_id),
            )
        except BaseException:
            # Nothing was recorded: whatever bytes were staged or moved into place go again.
            for writer in writers:
                writer.abort()
            with contextlib.suppress(StorageError):
                self.blobs.delete_many(keys)
            raise

    def _claim_ttl(self, ttl_s: float | None) -> float:
        ttl = self.settings.task_claim_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= self.settings.lease_max_ttl_s:
            raise InvalidInput(f"ttl_s must be between 0 and {self.settings.lease_max_ttl_s}")
        return ttl

    def _retry_delay(self, attempts: int) -> float:
        doubling = float(2 ** max(attempts - 1, 0))
        return min(self.settings.task_retry_delay_s * doubling, 300.0)

    def _remove_outputs(self, dropped: Sequence[tuple[str, str]]) -> None:
        """Remove outputs a task's end marked ``deleting``. Never raises: the state change
        that marked them is committed, and what is left is finished by recovery and cleanup."""
        try:
            removal = remove_artifacts(self.context, dropped, "task", self.clock.now())
        except EphemeraError as exc:
            log.warning("task outputs left deleting: %s", exc.message, extra={"action": "task"})
            return
        for artifact_id, error in removal.failed.items():
            log.warning("output %s left deleting: %s", artifact_id, error, extra={"action": "task"})

    # -- cleanup, audit, stats ------------------------------------------------------------

    def cleanup(
        self,
        operation: str,
        *,
        dry_run: bool = False,
        hours_old: float | None = None,
        days_old: float | None = None,
        session_id: str | None = None,
        purge_missing: bool = False,
        details: bool = False,
        actor: str = "library",
        progress: Progress | None = None,
    ) -> CleanupReport:
        """Run a cleanup operation (see ``ephemera.cleanup``); it is recorded in the audit log."""
        # A bad request changes nothing, the reserve included.
        request = CleanupRequest.checked(
            operation,
            dry_run=dry_run,
            hours_old=hours_old,
            days_old=days_old,
            session_id=session_id,
            purge_missing=purge_missing,
            details=details,
        )
        if not dry_run:
            # On a full volume the database cannot even record a delete: give it the reserve.
            self.volume.release_reserve_if_low()
        report = run_cleanup(self.context, request, actor=actor, progress=progress)
        self.metrics.observe(report)
        return report

    def audit(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        params: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> int:
        return self.catalog.insert_audit(
            self.clock.now(), actor, action, target, params or {}, result or {}
        )

    def audit_log(
        self, *, before: int | None = None, limit: int = 100, action: str | None = None
    ) -> Page[AuditEntry]:
        limit = _check_limit(limit)
        if before is not None and not 1 <= before < 2**63:
            raise InvalidInput("cursor must be an entry ID from a previous page")
        items = self.catalog.list_audit(before, limit + 1, action)
        if len(items) > limit:
            return Page(items[:limit], str(items[limit - 1].id))
        return Page(items, None)

    def verify(
        self,
        *,
        session_id: str | None = None,
        rate_mb_s: float | None = None,
        repair: Repair | str = Repair.FLAG,
        actor: str = "library",
        progress: ProgressFn | None = None,
    ) -> VerifyReport:
        """Re-hash stored bytes (see ``ephemera.integrity``); recorded in the audit log."""
        request = VerifyRequest.checked(session_id, rate_mb_s, repair)
        report = run_verify(self.context, request, actor=actor, progress=progress)
        self.metrics.observe_verify(report)
        return report

    def iter_verified(self, artifact: Artifact) -> Iterator[bytes]:
        """The bytes of an artifact already looked up, hashed as they stream: a mismatch flags
        it and raises ArtifactCorrupt before the last chunk (see ``ephemera.integrity``)."""
        return verified_chunks(self.context, artifact, on_flagged=self.metrics.observe_flagged)

    def check_intact(self, artifact: Artifact) -> None:
        """ArtifactCorrupt if verification found this artifact's bytes wrong or missing."""
        refuse_flagged(artifact)

    def cleanup_stats(self, *, include_orphaned: bool = False) -> dict[str, Any]:
        """What is stored, what each operation would delete now, leases, usage, last runs."""
        return cleanup_stats(self.context, include_orphaned=include_orphaned)


def _role(role: KeyRole | str) -> KeyRole:
    try:
        return KeyRole(role)
    except ValueError:
        raise InvalidInput("a key's role is 'admin', 'worker' or 'client'") from None


def _claim_lost(task_id: str) -> Conflict:
    return Conflict(
        f"task {task_id[:40]} is not held by this claim (cancelled, finished, or its claim "
        "expired and was taken over)"
    )


def _task_input(session_id: str, item: str | tuple[str, str] | Sequence[str]) -> TaskInput:
    owner, artifact_id = (session_id, item) if isinstance(item, str) else tuple(item)
    if not ids.SESSION_ID_RE.fullmatch(owner) or not ids.is_artifact_id(artifact_id):
        raise NotFound(f"artifact {artifact_id[:40]} not found")
    return TaskInput(owner, artifact_id)


def _check_label(label: str | None) -> str | None:
    if label is not None and (not isinstance(label, str) or len(label) > LABEL_MAX):
        raise InvalidInput(f"label must be text of at most {LABEL_MAX} characters")
    return label


def _check_timeout(name: str, value: int | None) -> int | None:
    if value is not None and not (
        isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_TIMEOUT_S
    ):
        raise InvalidInput(f"{name} must be between 1 and {MAX_TIMEOUT_S}, or null")
    return value


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be a JSON object")
    checked: dict[str, Any] = check_json(
        dict(metadata or {}), "metadata", max_bytes=METADATA_MAX_BYTES
    )
    return checked


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def _page(items: list[Any], limit: int) -> Page[Any]:
    if len(items) > limit:
        return Page(items[:limit], items[limit - 1].id)
    return Page(items, None)


def _chunks(data: bytes | BinaryIO | Iterable[bytes], size: int) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
    elif hasattr(data, "read"):
        while chunk := data.read(size):
            yield chunk
    else:
        yield from data
