"""The catalog: every SQL statement ephemera runs lives in this module.

Writes run in short transactions that take the write lock up front (``BEGIN IMMEDIATE`` on
SQLite; row locks on PostgreSQL), so two writers never deadlock on a lock upgrade.
A connection is checked out by one thread for one transaction and returned: connections are
never shared across threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    not_,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from ephemera import ids
from ephemera.catalog.schema import (
    admin_keys,
    artifacts,
    audit_log,
    lease_artifacts,
    leases,
    locks,
    sessions,
    tasks,
)
from ephemera.errors import (
    Conflict,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    SchemaOutOfDate,
    StorageError,
    StoreMissing,
    TooLarge,
)
from ephemera.fsutil import create_file, make_dirs
from ephemera.models import (
    AdminKey,
    Artifact,
    ArtifactState,
    AuditEntry,
    Claim,
    KeyRole,
    Lease,
    Session,
    SessionState,
    StorageClass,
    Task,
    TaskInput,
    TaskOutput,
    TaskState,
)
from ephemera.urls import redact_url

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 5


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("ephemera_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _database_error(exc: SQLAlchemyError) -> StorageError:
    # SQLITE_FULL, and PostgreSQL's disk_full: the one database failure cleanup can mend.
    orig = getattr(exc, "orig", None)
    if (
        getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or getattr(orig, "sqlstate", None) == "53100"
    ):
        return InsufficientStorage(
            "the database volume is full: nothing was written (cleanup frees space)"
        )
    return StorageError(f"database error: {exc.__class__.__name__}")


def _create_sqlite_file(path: Path, file_mode: int, dir_mode: int) -> None:
    # SQLite creates its -wal and -shm files with the database file's mode, so this one
    # creation decides all three.
    make_dirs(path.parent, dir_mode)
    with contextlib.suppress(FileExistsError):
        os.close(create_file(path, file_mode))


def _session(row: Row[Any], count: int = 0, total: int = 0) -> Session:
    return Session(
        id=row.id,
        label=row.label,
        metadata=row.metadata,
        state=SessionState(row.state),
        created_at=row.created_at,
        last_activity_at=row.last_activity_at,
        idle_timeout_s=row.idle_timeout_s,
        max_age_s=row.max_age_s,
        expires_at=row.expires_at,
        artifact_count=count,
        total_bytes=total,
    )


def _key(row: Row[Any]) -> AdminKey:
    return AdminKey(
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        role=KeyRole(row.role),
        expires_at=row.expires_at,
    )


def _audit(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        params=row.params,
        result=row.result,
    )


def _artifact(row: Row[Any]) -> Artifact:
    return Artifact(
        id=row.id,
        session_id=row.session_id,
        name=row.name,
        kind=row.kind,
        content_type=row.content_type,
        size=row.size or 0,
        sha256=row.sha256 or "",
        storage_class=StorageClass(row.storage_class),
        state=ArtifactState(row.state),
        created_at=row.created_at,
        expires_at=row.expires_at,
        retain_until=row.retain_until,
        producer=row.producer,
        integrity=row.integrity,
        integrity_error=row.integrity_error,
        verified_at=row.verified_at,
    )


RESULT_KINDS = ("result", "output")
PENDING = text("artifacts.state = 'pending'")


def session_leased(now: datetime) -> ColumnElement[bool]:
    """A valid lease names the session or any of its artifacts (correlates ``sessions``)."""
    return exists().where(leases.c.session_id == sessions.c.id, leases.c.expires_at > now)


def live_session(now: datetime) -> ColumnElement[bool]:
    """Open, and before its deadline or kept alive by a valid lease (correlates ``sessions``).

    A lease protects its session from expiry too: a worker holding one is never locked out.
    """
    return and_(
        sessions.c.state == SessionState.OPEN,
        or_(
            sessions.c.expires_at.is_(None),
            sessions.c.expires_at > now,
            session_leased(now),
        ),
    )


def artifact_leased(now: datetime) -> ColumnElement[bool]:
    """A valid lease names the artifact or its whole session (correlates ``artifacts``)."""
    return or_(
        exists().where(
            leases.c.session_id == artifacts.c.session_id,
            leases.c.scope == "session",
            leases.c.expires_at > now,
        ),
        exists().where(
            lease_artifacts.c.artifact_id == artifacts.c.id,
            leases.c.id == lease_artifacts.c.lease_id,
            leases.c.expires_at > now,
        ),
    )


def artifact_retained(now: datetime) -> ColumnElement[bool]:
    return and_(artifacts.c.retain_until.is_not(None), artifacts.c.retain_until > now)


def session_retained(now: datetime) -> ColumnElement[bool]:
    return exists().where(
        artifacts.c.session_id == sessions.c.id,
        artifacts.c.retain_until.is_not(None),
        artifacts.c.retain_until > now,
    )


@dataclass(frozen=True, slots=True)
class ArtifactSweep:
    """Which artifacts an artifact-deleting cleanup selects.

    ``expired``: temporary artifacts past ``expires_at``. ``old-results``: outputs of a
    producer that became ready before ``cutoff``. Retained artifacts are never selected.
    """

    rule: str
    now: datetime
    cutoff: datetime

    def condition(self) -> ColumnElement[bool]:
        if self.rule == "expired":
            matches = and_(
                artifacts.c.storage_class == "temporary",
                artifacts.c.expires_at.is_not(None),
                artifacts.c.expires_at <= self.cutoff,
            )
        elif self.rule == "old-results":
            matches = and_(
                artifacts.c.kind.in_(RESULT_KINDS),
                artifacts.c.producer.is_not(None),
                artifacts.c.ready_at.is_not(None),
                artifacts.c.ready_at <= self.cutoff,
            )
        else:
            raise ValueError(self.rule)
        return and_(matches, not_(artifact_retained(self.now)))

    def order(self) -> tuple[Any, Any]:
        column = artifacts.c.expires_at if self.rule == "expired" else artifacts.c.ready_at
        return column, artifacts.c.id


@dataclass(frozen=True, slots=True)
class SessionSweep:
    """Which sessions a session-closing cleanup selects.

    ``idle``: open sessions past their deadline (or, with ``idle_before``, inactive since
    then), and sessions stuck in ``closing``. ``one``: the named session, now. ``quota``:
    the named session, if still open.
    """

    rule: str
    now: datetime
    idle_before: datetime | None = None
    session_id: str | None = None

    def condition(self) -> ColumnElement[bool]:
        closing = sessions.c.state == SessionState.CLOSING
        is_open = sessions.c.state == SessionState.OPEN
        if self.rule == "idle":
            if self.idle_before is not None:
                idle = sessions.c.last_activity_at <= self.idle_before
            else:
                idle = and_(sessions.c.expires_at.is_not(None), sessions.c.expires_at <= self.now)
            return or_(closing, and_(is_open, idle))
        if self.rule in ("one", "quota"):
            return and_(sessions.c.id == self.session_id, or_(closing, is_open))
        raise ValueError(self.rule)

    def unprotected(self) -> ColumnElement[bool]:
        """No valid lease; and, except under quota pressure, no retained artifact.

        The contract lets retention outlive idle expiry, but the quota spares only what a
        lease protects.
        """
        free = not_(session_leased(self.now))
        if self.rule == "quota":
            return free
        return and_(free, not_(session_retained(self.now)))


@dataclass(frozen=True, slots=True)
class Candidate:
    id: str
    session_id: str
    size: int
    state: str
    leased: bool
    retained: bool
    order_key: Any = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What verification needs of an artifact record."""

    id: str
    session_id: str
    name: str
    size: int
    sha256: str
    integrity: str | None


_STORED = (
    artifacts.c.id,
    artifacts.c.session_id,
    artifacts.c.name,
    artifacts.c.size,
    artifacts.c.sha256,
    artifacts.c.integrity,
)


def _verifiable() -> ColumnElement[bool]:
    """A ready artifact of an open session: what verification reads and flags.

    A closing session's bytes are being removed (its artifacts stay ``ready`` until its
    records go), and a ``deleting`` artifact's too: their absence is no finding.
    """
    return and_(
        artifacts.c.state == ArtifactState.READY,
        artifacts.c.session_id.in_(
            select(sessions.c.id).where(sessions.c.state == SessionState.OPEN)
        ),
    )


def _scrub_due(due_before: datetime) -> ColumnElement[bool]:
    return and_(
        artifacts.c.integrity.is_(None),
        or_(
            artifacts.c.verified_at <= due_before,
            and_(artifacts.c.verified_at.is_(None), artifacts.c.ready_at <= due_before),
        ),
    )


_ready_usage = (
    select(
        artifacts.c.session_id,
        func.count().label("artifact_count"),
        func.coalesce(func.sum(artifacts.c.size), 0).label("artifact_bytes"),
    )
    .where(artifacts.c.state == ArtifactState.READY)
    .group_by(artifacts.c.session_id)
)


def _usage(conn: Connection, session_id: str) -> tuple[int, int]:
    """Number and bytes of a session's ready artifacts."""
    count, total = conn.execute(
        select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(
            artifacts.c.session_id == session_id, artifacts.c.state == ArtifactState.READY
        )
    ).one()
    return int(count), int(total)


def _session_bytes() -> Any:
    """Bytes of every artifact record of the session (correlates ``sessions``)."""
    return (
        select(func.coalesce(func.sum(artifacts.c.size), 0))
        .where(artifacts.c.session_id == sessions.c.id)
        .scalar_subquery()
    )


def _usage_all(conn: Connection, session_id: str) -> tuple[int, int]:
    """Number and bytes of a session's artifact records, whatever their state."""
    count, total = conn.execute(
        select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(
            artifacts.c.session_id == session_id
        )
    ).one()
    return int(count), int(total)


class Catalog:
    def __init__(
        self, url: str, *, create: bool = True, file_mode: int = 0o600, dir_mode: int = 0o700
    ) -> None:
        """``create=False``: never create the database (``prepare`` raises StoreMissing)."""
        self.url = url
        try:
            parsed = make_url(url)
            self.dialect = parsed.get_backend_name()
        except (ArgumentError, ValueError) as exc:
            raise InvalidInput(f"invalid database URL {redact_url(url)!r}: {exc}") from None
        self._create = create
        self._sqlite_file: Path | None = None
        if self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
            self._sqlite_file = Path(parsed.database)
            if create:
                _create_sqlite_file(self._sqlite_file, file_mode, dir_mode)
        # An unreachable server fails in seconds instead of at the OS's TCP timeout.
        connect_args: dict[str, Any] = {}
        if self.dialect == "postgresql" and "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            self.engine = create_engine(
                url, pool_pre_ping=self.dialect != "sqlite", connect_args=connect_args
            )
        except (ArgumentError, ImportError) as exc:
            raise InvalidInput(f"unsupported database URL {redact_url(url)!r}: {exc}") from None
        # SQLite has one writer at a time. Writers of this process queue here, woken in turn,
        # instead of in SQLite's busy handler, which polls with growing sleeps.
        self._writer_turn: threading.Lock | None = None
        # Advisory locks (PostgreSQL) live as long as the connection that took them.
        self._held_locks: dict[str, Connection] = {}
        self._locks_guard = threading.Lock()
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
            self._writer_turn = threading.Lock()

    def dispose(self) -> None:
        self.release_locks()
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise _database_error(exc) from exc

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with (
                self._writer_turn or contextlib.nullcontext(),
                self.engine.connect().execution_options(ephemera_write=True) as conn,
                conn.begin(),
            ):
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise _database_error(exc) from exc

    # -- schema ---------------------------------------------------------------------------

    def _alembic_config(self, conn: Connection) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def revisions(self) -> tuple[str | None, str]:
        """(the database's revision, the newest revision this code knows)."""
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        assert head is not None
        try:
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            # Drivers explain over several lines; callers print one.
            reason = " ".join(str(exc.orig).split())
            shown = redact_url(self.url)
            raise StorageError(f"cannot reach the database {shown}: {reason}") from exc
        return current, head

    def migrate(self) -> None:
        with self.engine.connect() as conn:
            command.upgrade(self._alembic_config(conn), "head")
            conn.commit()

    def prepare(self, *, migrate_empty: bool = True) -> None:
        """Migrate an empty database; refuse one that is behind (that takes ``migrate``)."""
        missing = (
            f"no ephemera store in {redact_url(self.url)}: "
            "create one with `ephemera migrate` or `ephemera serve`"
        )
        # Connecting would create the file: look first.
        if not self._create and self._sqlite_file and not self._sqlite_file.exists():
            raise StoreMissing(missing)
        current, head = self.revisions()
        if current == head:
            return
        with self.engine.connect() as conn:
            has_tables = bool(inspect(conn).get_table_names())
        if current is None and not has_tables and not self._create:
            raise StoreMissing(missing)
        if current is None and not has_tables and migrate_empty:
            self.migrate()
            return
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing'}, this version needs {head}: "
            "run `ephemera migrate`"
        )

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(select(1))

    # -- sessions -------------------------------------------------------------------------

    def insert_session(
        self, values: dict[str, Any], confirm: Callable[[Session], None] | None = None
    ) -> Session:
        """Insert a session; ``confirm`` sees it before the commit and may still refuse it."""
        try:
            with self._write() as conn:
                conn.execute(insert(sessions).values(**values))
                row = conn.execute(select(sessions).where(sessions.c.id == values["id"])).one()
                session = _session(row)
                if confirm is not None:
                    confirm(session)
        except IntegrityError as exc:
            raise Conflict(f"session {values['id']} already exists") from exc
        return session

    def is_live(self, session_id: str, now: datetime) -> bool:
        with self._read() as conn:
            return bool(conn.scalar(select(live_session(now)).where(sessions.c.id == session_id)))

    def session_with_liveness(self, session_id: str, now: datetime) -> Row[Any] | None:
        """The session row plus a ``live`` column, in one read (the request hot path)."""
        with self._read() as conn:
            return conn.execute(
                select(sessions, live_session(now).label("live")).where(sessions.c.id == session_id)
            ).first()

    def get_session_row(self, session_id: str) -> Row[Any] | None:
        with self._read() as conn:
            return conn.execute(select(sessions).where(sessions.c.id == session_id)).first()

    def get_session(self, session_id: str) -> Session | None:
        with self._read() as conn:
            row = conn.execute(select(sessions).where(sessions.c.id == session_id)).first()
            if row is None:
                return None
            count, total = _usage(conn, session_id)
        return _session(row, count, total)

    def list_sessions_with_leases(
        self, after: str | None, limit: int, now: datetime
    ) -> list[tuple[Session, int]]:
        usage = _ready_usage.subquery()
        lease_count = (
            select(func.count())
            .where(leases.c.session_id == sessions.c.id, leases.c.expires_at > now)
            .scalar_subquery()
        )
        query = (
            select(
                sessions,
                usage.c.artifact_count,
                usage.c.artifact_bytes,
                lease_count.label("lease_count"),
            )
            .outerjoin(usage, usage.c.session_id == sessions.c.id)
            .order_by(sessions.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(sessions.c.id > after)
        with self._read() as conn:
            return [
                (_session(r, r.artifact_count or 0, r.artifact_bytes or 0), int(r.lease_count))
                for r in conn.execute(query)
            ]

    def totals(self) -> tuple[int, int, int]:
        """(sessions, ready artifacts, their bytes)."""
        with self._read() as conn:
            count = conn.scalar(select(func.count()).select_from(sessions)) or 0
            artifact_count, total = conn.execute(
                select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(
                    artifacts.c.state == ArtifactState.READY
                )
            ).one()
        return int(count), int(artifact_count), int(total)

    def touch_session(
        self, session_id: str, now: datetime, expires_at: datetime | None, not_since: datetime
    ) -> None:
        """Record activity, unless it was recorded after ``not_since`` (keeps reads cheap)."""
        with self._write() as conn:
            conn.execute(
                update(sessions)
                .where(
                    sessions.c.id == session_id,
                    sessions.c.state == SessionState.OPEN,
                    sessions.c.last_activity_at < not_since,
                )
                .values(last_activity_at=now, expires_at=expires_at)
            )

    def update_session(
        self,
        session_id: str,
        now: datetime,
        change: Callable[[Row[Any]], dict[str, Any]],
        confirm: Callable[[Session], None] | None = None,
    ) -> tuple[Session, Session] | None:
        """Apply ``change(row)``'s values to a live session, atomically; (before, after).

        None if the session is not live. ``change`` and ``confirm`` run inside the transaction:
        if either raises, nothing changes.
        """
        with self._write() as conn:
            row = conn.execute(
                select(sessions, live_session(now).label("live"))
                .where(sessions.c.id == session_id)
                .with_for_update(of=sessions)
            ).first()
            if row is None or not row.live:
                return None
            values = change(row)
            conn.execute(update(sessions).where(sessions.c.id == session_id).values(**values))
            count, total = _usage(conn, session_id)
            after = conn.execute(select(sessions).where(sessions.c.id == session_id)).one()
            before_session = _session(row, count, total)
            after_session = _session(after, count, total)
            if confirm is not None:
                confirm(after_session)
        return before_session, after_session

    def begin_close(self, session_id: str, now: datetime, *, force: bool = True) -> Session | None:
        """open/closing -> closing; returns the session as it was, or None if it is gone.

        Without ``force`` a session that a valid lease protects is refused (Conflict).
        """
        with self._write() as conn:
            _lock_first(conn, select(sessions.c.id).where(sessions.c.id == session_id))
            row = conn.execute(
                select(sessions, session_leased(now).label("leased"))
                .where(sessions.c.id == session_id)
                .with_for_update()
            ).first()
            if row is None:
                return None
            if row.leased and not force:
                raise Conflict(f"session {session_id} is leased; close with force to override")
            if row.leased:
                # Forced: every task holding a lease here (its own, and others reading its
                # reference data) is cancelled; outputs elsewhere are left `deleting`, which
                # recovery and orphan reconciliation finish.
                for task_id in conn.scalars(
                    select(leases.c.task_id)
                    .where(leases.c.session_id == session_id, leases.c.task_id.is_not(None))
                    .distinct()
                ).all():
                    _end_task(
                        conn,
                        task_id,
                        TaskState.CANCELLED,
                        now,
                        error=f"cancelled: session {session_id} was closed",
                    )
            count, total = _usage(conn, session_id)
            if row.state == SessionState.OPEN:
                conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id)
                    .values(state=SessionState.CLOSING, closing_since=now)
                )
        return _session(row, count, total)

    def drop_session(self, session_id: str) -> tuple[int, int] | None:
        """Remove a closing session's records (its bytes must already be gone).

        Returns the number and bytes of the artifact records removed, or None when another
        caller removed the session first: exactly one caller counts each session.
        """
        with self._write() as conn:
            count, total = _usage_all(conn, session_id)
            lease_ids = select(leases.c.id).where(leases.c.session_id == session_id)
            conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id.in_(lease_ids)))
            conn.execute(delete(leases).where(leases.c.session_id == session_id))
            own_tasks = select(tasks.c.id).where(tasks.c.session_id == session_id)
            _release_task_leases(conn, own_tasks)
            conn.execute(delete(tasks).where(tasks.c.session_id == session_id))
            conn.execute(delete(artifacts).where(artifacts.c.session_id == session_id))
            gone = conn.execute(
                delete(sessions)
                .where(sessions.c.id == session_id, sessions.c.state == SessionState.CLOSING)
                .returning(sessions.c.id)
            ).first()
        return (int(count), int(total)) if gone is not None else None

    def session_ids_in_state(self, state: SessionState) -> list[str]:
        with self._read() as conn:
            return list(conn.scalars(select(sessions.c.id).where(sessions.c.state == state)))

    # -- artifacts ------------------------------------------------------------------------

    def insert_pending_artifact(self, values: dict[str, Any]) -> bool:
        """Insert a pending artifact if its session is live; False if it is not."""
        now = values["created_at"]
        with self._write() as conn:
            live = conn.scalar(
                select(live_session(now))
                .where(sessions.c.id == values["session_id"])
                .with_for_update(read=True)
            )
            if not live:
                return False
            conn.execute(insert(artifacts).values(**values, state=ArtifactState.PENDING))
            return True

    def finalize_artifact(
        self,
        artifact_id: str,
        session_id: str,
        values: dict[str, Any],
        quota_bytes: int | None,
        commit_bytes: Callable[[], object],
        claim: tuple[str, str] | None = None,
    ) -> Artifact:
        """pending -> ready, with ``commit_bytes`` run inside the transaction.

        The session row is locked (shared) first, so a concurrent close either happens
        entirely before (then this raises NotFound and nothing is committed) or entirely
        after (then it sees a ready artifact and removes its bytes). Nothing the transaction
        writes is visible before it commits, and ``commit_bytes`` runs before that commit:
        ``ready`` is never seen without durable bytes.

        A task's output (``claim``: task ID, claim ID) commits only while that claim holds
        the task, and joins the task's lease in the same transaction.
        """
        with self._write() as conn:
            lease_id = _admit(conn, session_id, values["size"], quota_bytes, claim)
            if lease_id is not None:
                conn.execute(
                    insert(lease_artifacts).values(lease_id=lease_id, artifact_id=artifact_id)
                )
            done = conn.execute(
                update(artifacts)
                .where(artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.PENDING)
                .values(**values, state=ArtifactState.READY)
            )
            if done.rowcount != 1:
                raise NotFound(f"upload {artifact_id} was abandoned and has been removed")
            commit_bytes()
            row = conn.execute(select(artifacts).where(artifacts.c.id == artifact_id)).one()
        return _artifact(row)

    def insert_ready_artifacts(
        self,
        session_id: str,
        rows: Sequence[dict[str, Any]],
        quota_bytes: int | None,
        commit_bytes: Sequence[Callable[[], object]],
        claim: tuple[str, str] | None = None,
    ) -> list[Artifact]:
        """Several artifacts whose bytes are staged and synced, made ready in one transaction.

        The same ordering as :meth:`finalize_artifact`, with no pending record first: a
        crash before the commit leaves only staged or unreferenced bytes, which orphan
        reconciliation removes. One transaction for a batch is what makes many small task
        outputs cheap.
        """
        total = sum(int(r["size"]) for r in rows)
        with self._write() as conn:
            lease_id = _admit(conn, session_id, total, quota_bytes, claim)
            conn.execute(
                insert(artifacts),
                [{**r, "session_id": session_id, "state": ArtifactState.READY} for r in rows],
            )
            if lease_id is not None:
                conn.execute(
                    insert(lease_artifacts),
                    [{"lease_id": lease_id, "artifact_id": r["id"]} for r in rows],
                )
            for commit in commit_bytes:
                commit()
            found = {
                r.id: _artifact(r)
                for r in conn.execute(
                    select(artifacts).where(artifacts.c.id.in_([r["id"] for r in rows]))
                )
            }
            return [found[r["id"]] for r in rows]

    def claimed_session(self, task_id: str, claim_id: str) -> str | None:
        """The session of the task that ``claim_id`` holds (one primary-key read)."""
        with self._read() as conn:
            return conn.scalar(select(tasks.c.session_id).where(_held(task_id, claim_id)))

    def claimed_inputs(self, task_id: str, claim_id: str) -> list[TaskInput] | None:
        with self._read() as conn:
            inputs = conn.scalar(select(tasks.c.inputs).where(_held(task_id, claim_id)))
        return None if inputs is None else [TaskInput(s, a) for s, a in inputs]

    def delete_pending_artifact(self, artifact_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                delete(artifacts).where(
                    artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.PENDING
                )
            )

    def get_artifact(self, session_id: str, artifact_id: str) -> Artifact | None:
        with self._read() as conn:
            row = conn.execute(
                select(artifacts).where(
                    artifacts.c.id == artifact_id,
                    artifacts.c.session_id == session_id,
                    artifacts.c.state == ArtifactState.READY,
                )
            ).first()
        return _artifact(row) if row is not None else None

    def list_artifacts(
        self, session_id: str, kind: str | None, after: str | None, limit: int
    ) -> list[Artifact]:
        query = (
            select(artifacts)
            .where(
                artifacts.c.session_id == session_id,
                artifacts.c.state == ArtifactState.READY,
            )
            .order_by(artifacts.c.id)
            .limit(limit)
        )
        if kind is not None:
            query = query.where(artifacts.c.kind == kind)
        if after is not None:
            query = query.where(artifacts.c.id > after)
        with self._read() as conn:
            return [_artifact(r) for r in conn.execute(query)]

    def mark_artifact_deleting(
        self, session_id: str, artifact_id: str, now: datetime
    ) -> Artifact | None:
        """ready -> deleting (idempotent for one already deleting); None if there is none.

        An artifact that a valid lease protects is refused (Conflict).
        """
        with self._write() as conn:
            _lock_first(
                conn,
                select(sessions.c.id).where(sessions.c.id == session_id),
                read=True,
            )
            _lock_first(conn, select(artifacts.c.id).where(artifacts.c.id == artifact_id))
            row = conn.execute(
                select(artifacts, artifact_leased(now).label("leased"))
                .where(
                    artifacts.c.id == artifact_id,
                    artifacts.c.session_id == session_id,
                    artifacts.c.state.in_([ArtifactState.READY, ArtifactState.DELETING]),
                )
                .with_for_update()
            ).first()
            if row is None:
                return None
            if row.leased and row.state == ArtifactState.READY:
                raise Conflict(f"artifact {artifact_id} is leased")
            conn.execute(
                update(artifacts)
                .where(artifacts.c.id == artifact_id)
                .values(state=ArtifactState.DELETING)
            )
        return _artifact(row)

    def drop_artifact(self, artifact_id: str) -> None:
        self.drop_deleting_artifacts([artifact_id])

    def artifacts_in_state(self, state: ArtifactState) -> list[tuple[str, str]]:
        with self._read() as conn:
            return [
                (r.session_id, r.id)
                for r in conn.execute(
                    select(artifacts.c.session_id, artifacts.c.id).where(artifacts.c.state == state)
                )
            ]

    def set_retention(
        self, session_id: str, artifact_id: str, retain_until: datetime | None
    ) -> Artifact | None:
        with self._write() as conn:
            done = conn.execute(
                update(artifacts)
                .where(
                    artifacts.c.id == artifact_id,
                    artifacts.c.session_id == session_id,
                    artifacts.c.state == ArtifactState.READY,
                )
                .values(retain_until=retain_until)
            )
            if done.rowcount != 1:
                return None
            row = conn.execute(select(artifacts).where(artifacts.c.id == artifact_id)).one()
        return _artifact(row)

    # -- leases ---------------------------------------------------------------------------

    def insert_lease(self, lease: Lease) -> None:
        """Record a lease if its session is live and every named artifact is ready in it."""
        with self._write() as conn:
            # A protector locks what it protects exclusively, so a cleaner's check that comes
            # after its lock always sees the lease (see _lock_first).
            live = conn.scalar(
                select(live_session(lease.created_at))
                .where(sessions.c.id == lease.session_id)
                .with_for_update()
            )
            if not live:
                raise NotFound(f"session {lease.session_id} not found")
            if lease.artifact_ids:
                found = set(
                    conn.scalars(
                        select(artifacts.c.id)
                        .where(
                            artifacts.c.session_id == lease.session_id,
                            artifacts.c.id.in_(lease.artifact_ids),
                            artifacts.c.state == ArtifactState.READY,
                        )
                        .with_for_update(read=True)
                    )
                )
                missing = sorted(set(lease.artifact_ids) - found)
                if missing:
                    raise NotFound(f"artifact {missing[0]} not found")
            conn.execute(
                insert(leases).values(
                    id=lease.id,
                    session_id=lease.session_id,
                    holder=lease.holder,
                    scope="artifacts" if lease.artifact_ids else "session",
                    created_at=lease.created_at,
                    expires_at=lease.expires_at,
                )
            )
            if lease.artifact_ids:
                conn.execute(
                    insert(lease_artifacts),
                    [{"lease_id": lease.id, "artifact_id": a} for a in lease.artifact_ids],
                )

    def _lease(self, conn: Connection, session_id: str, lease_id: str) -> Lease | None:
        row = conn.execute(
            select(leases).where(leases.c.id == lease_id, leases.c.session_id == session_id)
        ).first()
        if row is None:
            return None
        names = conn.scalars(
            select(lease_artifacts.c.artifact_id)
            .where(lease_artifacts.c.lease_id == lease_id)
            .order_by(lease_artifacts.c.artifact_id)
        )
        return Lease(
            id=row.id,
            session_id=row.session_id,
            holder=row.holder,
            artifact_ids=tuple(names),
            created_at=row.created_at,
            expires_at=row.expires_at,
        )

    def get_lease(self, session_id: str, lease_id: str) -> Lease | None:
        with self._read() as conn:
            return self._lease(conn, session_id, lease_id)

    def renew_lease(
        self, session_id: str, lease_id: str, now: datetime, expires_at: datetime
    ) -> Lease | None:
        """Extend a lease that is still valid; an expired lease cannot come back."""
        with self._write() as conn:
            _refuse_task_lease(
                conn.scalar(
                    select(leases.c.task_id).where(
                        leases.c.id == lease_id, leases.c.session_id == session_id
                    )
                )
            )
            done = conn.execute(
                update(leases)
                .where(
                    leases.c.id == lease_id,
                    leases.c.session_id == session_id,
                    leases.c.expires_at > now,
                )
                .values(expires_at=expires_at)
            )
            if done.rowcount != 1:
                return None
            return self._lease(conn, session_id, lease_id)

    def delete_lease(self, session_id: str, lease_id: str) -> bool:
        with self._write() as conn:
            owned = conn.execute(
                select(leases.c.id, leases.c.task_id).where(
                    leases.c.id == lease_id, leases.c.session_id == session_id
                )
            ).first()
            if owned is None:
                return False
            _refuse_task_lease(owned.task_id)
            conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id == lease_id))
            conn.execute(delete(leases).where(leases.c.id == lease_id))
            return True

    def list_leases(self, session_id: str) -> list[Lease]:
        with self._read() as conn:
            lease_ids = list(
                conn.scalars(
                    select(leases.c.id)
                    .where(leases.c.session_id == session_id)
                    .order_by(leases.c.id)
                )
            )
            return [lease for i in lease_ids if (lease := self._lease(conn, session_id, i))]

    def purge_expired_leases(self, now: datetime) -> int:
        """Drop lease rows that protect nothing any more."""
        with self._write() as conn:
            stale = select(leases.c.id).where(leases.c.expires_at <= now)
            conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id.in_(stale)))
            return conn.execute(delete(leases).where(leases.c.expires_at <= now)).rowcount

    # -- cleanup: artifacts ---------------------------------------------------------------

    def artifact_candidates(
        self, sweep: ArtifactSweep, after: tuple[Any, str] | None, limit: int
    ) -> list[Candidate]:
        """The next batch the sweep selects, in index order after ``after``."""
        first, second = sweep.order()
        query = (
            select(
                artifacts.c.id,
                artifacts.c.session_id,
                artifacts.c.size,
                artifacts.c.state,
                first.label("order_key"),
                artifact_leased(sweep.now).label("leased"),
            )
            .where(
                artifacts.c.state.in_([ArtifactState.READY, ArtifactState.DELETING]),
                sweep.condition(),
            )
            .order_by(first, second)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tuple_(first, second) > tuple_(after[0], after[1]))
        with self._read() as conn:
            return [
                Candidate(
                    r.id,
                    r.session_id,
                    r.size or 0,
                    r.state,
                    bool(r.leased) and r.state == ArtifactState.READY,
                    False,
                    r.order_key,
                )
                for r in conn.execute(query)
            ]

    def claim_artifacts(self, sweep: ArtifactSweep, ids: Sequence[str]) -> list[Candidate]:
        """ready -> deleting for those the sweep still selects and no lease protects.

        Artifacts already ``deleting`` (an interrupted run) are returned too, so a later run
        finishes them. The protection is checked in the same statement that marks.
        """
        if not ids:
            return []
        with self._write() as conn:
            _lock_first(
                conn,
                select(sessions.c.id)
                .where(
                    sessions.c.id.in_(select(artifacts.c.session_id).where(artifacts.c.id.in_(ids)))
                )
                .order_by(sessions.c.id),
                read=True,
            )
            claimable: Sequence[str] = ids
            if conn.dialect.name == "postgresql":
                # Cleaners running at once (replicas) split the batch instead of queueing:
                # rows another run holds are its to finish.
                claimable = conn.scalars(
                    select(artifacts.c.id)
                    .where(artifacts.c.id.in_(ids))
                    .order_by(artifacts.c.id)
                    .with_for_update(skip_locked=True)
                ).all()
            conn.execute(
                update(artifacts)
                .where(
                    artifacts.c.id.in_(claimable),
                    artifacts.c.state == ArtifactState.READY,
                    sweep.condition(),
                    not_(artifact_leased(sweep.now)),
                )
                .values(state=ArtifactState.DELETING)
            )
            rows = conn.execute(
                select(artifacts.c.id, artifacts.c.session_id, artifacts.c.size).where(
                    artifacts.c.id.in_(ids), artifacts.c.state == ArtifactState.DELETING
                )
            )
            return [
                Candidate(r.id, r.session_id, r.size or 0, "deleting", False, False) for r in rows
            ]

    def drop_deleting_artifacts(self, ids: Sequence[str]) -> list[tuple[str, str, int]]:
        """Remove ``deleting`` records; returns (session, id, size) of those this call removed."""
        if not ids:
            return []
        with self._write() as conn:
            conn.execute(delete(lease_artifacts).where(lease_artifacts.c.artifact_id.in_(ids)))
            rows = conn.execute(
                delete(artifacts)
                .where(artifacts.c.id.in_(ids), artifacts.c.state == ArtifactState.DELETING)
                .returning(artifacts.c.session_id, artifacts.c.id, artifacts.c.size)
            )
            return [(r.session_id, r.id, r.size or 0) for r in rows]

    # -- cleanup: sessions ----------------------------------------------------------------

    def session_candidates(
        self, sweep: SessionSweep, after: str | None, limit: int
    ) -> list[Candidate]:
        usage = _session_bytes()
        query = (
            select(
                sessions.c.id,
                sessions.c.state,
                usage.label("size"),
                session_leased(sweep.now).label("leased"),
                session_retained(sweep.now).label("retained"),
            )
            .where(sweep.condition())
            .order_by(sessions.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(sessions.c.id > after)
        with self._read() as conn:
            return [
                Candidate(
                    r.id,
                    r.id,
                    int(r.size or 0),
                    r.state,
                    bool(r.leased) and r.state == SessionState.OPEN,
                    bool(r.retained) and r.state == SessionState.OPEN,
                )
                for r in conn.execute(query)
            ]

    def claim_session(self, sweep: SessionSweep) -> bool:
        """open -> closing if the sweep still selects it and nothing protects it.

        A session already ``closing`` is claimed again, so an interrupted close is finished.
        """
        assert sweep.session_id is not None
        with self._write() as conn:
            _lock_first(conn, select(sessions.c.id).where(sessions.c.id == sweep.session_id))
            claimed = conn.execute(
                update(sessions)
                .where(
                    sessions.c.id == sweep.session_id,
                    sweep.condition(),
                    or_(sessions.c.state == SessionState.CLOSING, sweep.unprotected()),
                )
                .values(
                    state=SessionState.CLOSING,
                    closing_since=case(
                        (sessions.c.closing_since.is_(None), sweep.now),
                        else_=sessions.c.closing_since,
                    ),
                )
            )
            return claimed.rowcount == 1

    def session_usage_all(self, session_id: str) -> tuple[int, int]:
        """Number and bytes of every artifact record of a session, whatever its state."""
        with self._read() as conn:
            return _usage_all(conn, session_id)

    def eviction_candidates(
        self, now: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[Candidate]:
        """Open sessions, least recently active first, for the quota."""
        usage = _session_bytes()
        query = (
            select(
                sessions.c.id,
                sessions.c.state,
                sessions.c.last_activity_at.label("order_key"),
                usage.label("size"),
                session_leased(now).label("leased"),
            )
            .where(sessions.c.state == SessionState.OPEN)
            .order_by(sessions.c.last_activity_at, sessions.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                or_(
                    sessions.c.last_activity_at > after[0],
                    and_(sessions.c.last_activity_at == after[0], sessions.c.id > after[1]),
                )
            )
        with self._read() as conn:
            return [
                Candidate(r.id, r.id, int(r.size or 0), r.state, bool(r.leased), False, r.order_key)
                for r in conn.execute(query)
            ]

    def stored_bytes(self) -> int:
        with self._read() as conn:
            return int(conn.scalar(select(func.coalesce(func.sum(artifacts.c.size), 0))) or 0)

    # -- cleanup: orphans -----------------------------------------------------------------

    def stale_pending(
        self, cutoff: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[Candidate]:
        query = (
            select(artifacts.c.id, artifacts.c.session_id, artifacts.c.created_at)
            # Spelled literally: a partial index serves only a query that repeats its predicate.
            .where(PENDING, artifacts.c.created_at < cutoff)
            .order_by(artifacts.c.created_at, artifacts.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                tuple_(artifacts.c.created_at, artifacts.c.id) > tuple_(after[0], after[1])
            )
        with self._read() as conn:
            return [
                Candidate(r.id, r.session_id, 0, "pending", False, False, r.created_at)
                for r in conn.execute(query)
            ]

    def drop_pending(self, ids: Sequence[str], cutoff: datetime) -> list[str]:
        if not ids:
            return []
        with self._write() as conn:
            rows = conn.execute(
                delete(artifacts)
                .where(
                    artifacts.c.id.in_(ids),
                    artifacts.c.state == ArtifactState.PENDING,
                    artifacts.c.created_at < cutoff,
                )
                .returning(artifacts.c.id)
            )
            return [r.id for r in rows]

    def session_ids(self, after: str | None, limit: int) -> list[str]:
        query = select(sessions.c.id).order_by(sessions.c.id).limit(limit)
        if after is not None:
            query = query.where(sessions.c.id > after)
        with self._read() as conn:
            return list(conn.scalars(query))

    def artifact_states(self, session_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Every artifact record of these sessions: session -> id -> state (index only)."""
        found: dict[str, dict[str, str]] = {sid: {} for sid in session_ids}
        query = select(artifacts.c.session_id, artifacts.c.id, artifacts.c.state).where(
            artifacts.c.session_id.in_(session_ids)
        )
        with self._read() as conn:
            for sid, aid, state in conn.execute(query):
                found[sid][aid] = state
        return found

    def artifact_sizes(self, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                select(artifacts.c.id, artifacts.c.size).where(artifacts.c.id.in_(ids))
            )
            return {r[0]: r[1] or 0 for r in rows}

    def mark_missing_deleting(self, artifact_id: str) -> bool:
        """ready -> deleting for a record whose bytes are gone (purge on request)."""
        with self._write() as conn:
            done = conn.execute(
                update(artifacts)
                .where(artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.READY)
                .values(state=ArtifactState.DELETING)
            )
            return done.rowcount == 1

    # -- integrity ------------------------------------------------------------------------

    def verify_totals(self, session_id: str | None, due_before: datetime | None) -> tuple[int, int]:
        """Number and bytes of the ready artifacts a verify run will read."""
        query = select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(
            _verifiable()
        )
        if session_id is not None:
            query = query.where(artifacts.c.session_id == session_id)
        if due_before is not None:
            query = query.where(_scrub_due(due_before))
        with self._read() as conn:
            count, total = conn.execute(query).one()
        return int(count), int(total)

    def verify_batch(self, session_id: str | None, after: str | None, limit: int) -> list[Stored]:
        """Ready artifacts of open sessions (one, or all) in ID order after ``after``."""
        query = select(*_STORED).where(_verifiable()).order_by(artifacts.c.id).limit(limit)
        if session_id is not None:
            query = query.where(artifacts.c.session_id == session_id)
        if after is not None:
            query = query.where(artifacts.c.id > after)
        with self._read() as conn:
            return [Stored(*r) for r in conn.execute(query)]

    def scrub_batch(self, due_before: datetime, skip: Sequence[str], limit: int) -> list[Stored]:
        """Unflagged ready artifacts not verified since ``due_before``, least recently first.

        Never verified ones (by upload time) come first, then by ``verified_at``: each
        verification moves an artifact out of the selection, so a stopped scrub resumes
        where it stopped. ``skip``: those a read error left undecided in this run.
        """
        never = (
            select(*_STORED)
            .where(
                _verifiable(),
                artifacts.c.integrity.is_(None),
                artifacts.c.verified_at.is_(None),
                artifacts.c.ready_at <= due_before,
            )
            .order_by(artifacts.c.ready_at, artifacts.c.id)
        )
        stale = (
            select(*_STORED)
            .where(
                _verifiable(),
                artifacts.c.integrity.is_(None),
                artifacts.c.verified_at <= due_before,
            )
            .order_by(artifacts.c.verified_at, artifacts.c.id)
        )
        if skip:
            never = never.where(artifacts.c.id.not_in(skip))
            stale = stale.where(artifacts.c.id.not_in(skip))
        with self._read() as conn:
            found = [Stored(*r) for r in conn.execute(never.limit(limit))]
            if len(found) < limit:
                found += [Stored(*r) for r in conn.execute(stale.limit(limit - len(found)))]
        return found

    def mark_verified(self, ids: Sequence[str], now: datetime) -> None:
        """The bytes hashed right: record when, and lift any flag (restored from a backup)."""
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                update(artifacts)
                .where(artifacts.c.id.in_(ids), artifacts.c.state == ArtifactState.READY)
                .values(verified_at=now, integrity=None, integrity_error=None)
            )

    def flag_artifacts(self, flags: Sequence[tuple[str, str, str]]) -> set[str]:
        """Flag (id, integrity, error) artifacts; returns the IDs flagged.

        Re-checked as it writes: an artifact marked deleting, or whose session began closing,
        since it was read is being removed, not found wrong, and is left alone.
        """
        if not flags:
            return set()
        ids = [f[0] for f in flags]
        with self._write() as conn:
            conn.execute(
                update(artifacts)
                .where(artifacts.c.id == bindparam("flag_id"), _verifiable())
                .values(
                    integrity=bindparam("flag_integrity"), integrity_error=bindparam("flag_error")
                ),
                [
                    {"flag_id": i, "flag_integrity": kind, "flag_error": error[:500]}
                    for i, kind, error in flags
                ],
            )
            return set(
                conn.scalars(
                    select(artifacts.c.id).where(
                        artifacts.c.id.in_(ids), _verifiable(), artifacts.c.integrity.is_not(None)
                    )
                )
            )

    def flagged_counts(self) -> dict[str, int]:
        """Ready artifacts verification found wrong, by integrity flag (``corrupt``,
        ``missing``). Reads only the partial index of flagged ones: cheap at every scrape."""
        with self._read() as conn:
            rows = conn.execute(
                select(artifacts.c.integrity, func.count())
                .where(artifacts.c.integrity.is_not(None), artifacts.c.state == ArtifactState.READY)
                .group_by(artifacts.c.integrity)
            )
            return {r[0]: int(r[1]) for r in rows}

    def never_verified_count(self) -> int:
        """Ready artifacts whose bytes no verification has hashed yet."""
        with self._read() as conn:
            never = conn.scalar(
                select(func.count()).where(
                    artifacts.c.state == ArtifactState.READY, artifacts.c.verified_at.is_(None)
                )
            )
        return int(never or 0)

    # -- stats ----------------------------------------------------------------------------

    def session_states(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(select(sessions.c.state, func.count()).group_by(sessions.c.state))
            return {r[0]: int(r[1]) for r in rows}

    def artifact_breakdown(self) -> list[tuple[str, str, int, int]]:
        """(storage class, state, count, bytes) for every combination present."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    artifacts.c.storage_class,
                    artifacts.c.state,
                    func.count(),
                    func.coalesce(func.sum(artifacts.c.size), 0),
                ).group_by(artifacts.c.storage_class, artifacts.c.state)
            )
            return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def lease_counts(self, now: datetime) -> dict[str, int]:
        with self._read() as conn:
            valid = leases.c.expires_at > now
            active = conn.scalar(select(func.count()).select_from(leases).where(valid)) or 0
            leased_sessions = (
                conn.scalar(select(func.count(func.distinct(leases.c.session_id))).where(valid))
                or 0
            )
            leased_artifacts = (
                conn.scalar(
                    select(func.count(func.distinct(lease_artifacts.c.artifact_id)))
                    .select_from(lease_artifacts.join(leases))
                    .where(valid)
                )
                or 0
            )
        return {
            "leases": int(active),
            "sessions": int(leased_sessions),
            "artifacts": int(leased_artifacts),
        }

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
        with self._write() as conn:
            row = conn.execute(
                insert(audit_log)
                .values(
                    at=at, actor=actor, action=action, target=target, params=params, result=result
                )
                .returning(audit_log.c.id)
            ).one()
            return int(row.id)

    def list_audit(
        self, before: int | None, limit: int, action_prefix: str | None = None
    ) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(audit_log.c.id < before)
        if action_prefix:
            query = query.where(audit_log.c.action.startswith(action_prefix, autoescape=True))
        with self._read() as conn:
            return [_audit(r) for r in conn.execute(query)]

    def last_audit_per_action(self, action_prefix: str) -> list[AuditEntry]:
        latest = (
            select(func.max(audit_log.c.id))
            .where(audit_log.c.action.startswith(action_prefix, autoescape=True))
            .group_by(audit_log.c.action)
        )
        with self._read() as conn:
            rows = conn.execute(
                select(audit_log).where(audit_log.c.id.in_(latest)).order_by(audit_log.c.action)
            )
            return [_audit(r) for r in rows]

    # -- locks ----------------------------------------------------------------------------

    def try_lock(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """Take or extend a named lock; False while someone else holds it unexpired.

        On PostgreSQL it is a session advisory lock on a connection kept for it: held for
        as long as this process lives (``until`` is not needed), released by the server the
        moment the process dies, and independent of the replicas' clocks. Elsewhere it is a
        row with an expiry.
        """
        if self.dialect == "postgresql":
            return self._advisory_lock(name)
        with self._write() as conn:
            row = conn.execute(select(locks).where(locks.c.name == name).with_for_update()).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(locks).values(name=name, holder=holder, expires_at=until)
                        )
                except IntegrityError:
                    return False
                return True
            if row.holder != holder and row.expires_at > now:
                return False
            conn.execute(
                update(locks).where(locks.c.name == name).values(holder=holder, expires_at=until)
            )
            return True

    def _advisory_lock(self, name: str) -> bool:
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with self._locks_guard:
            held = self._held_locks.get(name)
            if held is not None:
                try:
                    held.exec_driver_sql("SELECT 1")
                    return True
                except SQLAlchemyError:
                    # The connection, and with it the lock, is gone: try to take it again.
                    with contextlib.suppress(SQLAlchemyError):
                        held.invalidate()
                        held.close()
                    del self._held_locks[name]
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
            except SQLAlchemyError as exc:
                conn.close()
                raise StorageError(f"database error: {exc.__class__.__name__}") from exc
            if not got:
                conn.close()
                return False
            self._held_locks[name] = conn
            return True

    def release_locks(self) -> None:
        with self._locks_guard:
            for conn in self._held_locks.values():
                # Invalidate, not close: a pooled connection would keep the lock for its next user.
                with contextlib.suppress(SQLAlchemyError):
                    conn.invalidate()
                    conn.close()
            self._held_locks.clear()

    # -- tasks ----------------------------------------------------------------------------

    def task_inputs(self, refs: Sequence[TaskInput], now: datetime) -> list[Artifact]:
        """The named ready artifacts of live sessions, in order; NotFound for a missing one."""
        with self._read() as conn:
            return _inputs(conn, refs, now)

    def insert_task(self, values: dict[str, Any], refs: Sequence[TaskInput]) -> Task:
        """Queue a task and take its leases: one in each session it touches, never expiring.

        The leases name the inputs (so they outlive expiry, cleanup and deletion) and, in the
        task's own session, later its outputs; the task's end releases them.
        """
        task_id, session_id, now = values["id"], values["session_id"], values["created_at"]
        with self._write() as conn:
            # Protector: lock every session it protects, then its inputs (see _lock_first).
            touched = sorted({session_id, *(r.session_id for r in refs)})
            conn.execute(
                select(sessions.c.id)
                .where(sessions.c.id.in_(touched))
                .order_by(sessions.c.id)
                .with_for_update()
            ).all()
            live = conn.scalar(select(live_session(now)).where(sessions.c.id == session_id))
            if not live:
                raise NotFound(f"session {session_id} not found")
            conn.execute(
                select(artifacts.c.id)
                .where(artifacts.c.id.in_({r.artifact_id for r in refs}))
                .order_by(artifacts.c.id)
                .with_for_update(read=True)
            ).all()
            _inputs(conn, refs, now)
            conn.execute(insert(tasks).values(**values))
            named: dict[str, dict[str, None]] = {session_id: {}}
            for ref in refs:
                named.setdefault(ref.session_id, {})[ref.artifact_id] = None
            for lease_session, artifact_ids in named.items():
                lease_id = ids.new_uuid7()
                conn.execute(
                    insert(leases).values(
                        id=lease_id,
                        session_id=lease_session,
                        holder=f"task:{task_id}",
                        scope="artifacts",
                        created_at=now,
                        expires_at=TASK_LEASE_EXPIRY,
                        task_id=task_id,
                    )
                )
                if artifact_ids:
                    conn.execute(
                        insert(lease_artifacts),
                        [{"lease_id": lease_id, "artifact_id": a} for a in artifact_ids],
                    )
            row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
            return _tasks(conn, [row])[0]

    def get_task(self, session_id: str, task_id: str) -> Task | None:
        with self._read() as conn:
            row = conn.execute(
                select(tasks).where(tasks.c.id == task_id, tasks.c.session_id == session_id)
            ).first()
            return None if row is None else _tasks(conn, [row])[0]

    def list_tasks(
        self, session_id: str, state: TaskState | None, after: str | None, limit: int
    ) -> list[Task]:
        query = (
            select(tasks).where(tasks.c.session_id == session_id).order_by(tasks.c.id).limit(limit)
        )
        if state is not None:
            query = query.where(tasks.c.state == state)
        if after is not None:
            query = query.where(tasks.c.id > after)
        with self._read() as conn:
            return _tasks(conn, list(conn.execute(query)))

    def claim_task(
        self,
        processors: Sequence[str],
        worker: str,
        claim_id: str,
        now: datetime,
        until: datetime,
        retry_delay: Callable[[int], float],
    ) -> tuple[Claim | None, list[tuple[str, str]]]:
        """Hand the oldest runnable task to ``worker``; first requeue those whose worker died.

        Returns the claim (or None) and the outputs of lost attempts, now ``deleting``, whose
        bytes the caller removes. One write transaction: two workers never claim one task.
        """
        # Idle workers poll: look before taking the write lock, which uploads also need.
        with self._read() as conn:
            work = conn.scalar(
                select(
                    or_(
                        exists().where(
                            tasks.c.state == TaskState.PENDING,
                            tasks.c.processor.in_(processors),
                            tasks.c.not_before <= now,
                        ),
                        exists().where(
                            tasks.c.state == TaskState.RUNNING, tasks.c.claimed_until < now
                        ),
                    )
                )
            )
        if not work:
            return None, []
        with self._write() as conn:
            dropped = _reap_lost(conn, now, retry_delay)
            for _ in range(16):
                row = conn.execute(
                    select(tasks)
                    .where(
                        tasks.c.state == TaskState.PENDING,
                        tasks.c.processor.in_(processors),
                        tasks.c.not_before <= now,
                    )
                    .order_by(tasks.c.created_at, tasks.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None, dropped
                task_id = row.id
                try:
                    inputs = _inputs(conn, [TaskInput(s, a) for s, a in row.inputs], now)
                except NotFound as exc:
                    # Only a forced close removes a leased input; the task cannot run.
                    dropped += _end_task(conn, task_id, TaskState.FAILED, now, error=exc.message)
                    continue
                conn.execute(
                    update(tasks)
                    .where(tasks.c.id == task_id)
                    .values(
                        state=TaskState.RUNNING,
                        worker=worker,
                        claim_id=claim_id,
                        claimed_until=until,
                        attempts=tasks.c.attempts + 1,
                        started_at=now,
                        progress_done=0,
                        progress_total=None,
                    )
                )
                row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
                return Claim(_tasks(conn, [row])[0], claim_id, until, tuple(inputs)), dropped
        return None, dropped

    def heartbeat_task(
        self,
        task_id: str,
        claim_id: str,
        until: datetime,
        progress: tuple[int, int | None] | None,
    ) -> bool:
        """Extend a claim (and record progress); False if the claim is no longer held."""
        values: dict[str, Any] = {"claimed_until": until}
        if progress is not None:
            values["progress_done"], values["progress_total"] = progress
        with self._write() as conn:
            done = conn.execute(update(tasks).where(_held(task_id, claim_id)).values(**values))
            return done.rowcount == 1

    def finish_task(
        self,
        task_id: str,
        claim_id: str,
        now: datetime,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        retry_delay: Callable[[int], float] | None = None,
    ) -> tuple[Task, list[tuple[str, str]]]:
        """End the attempt that ``claim_id`` holds: success (``error`` None) or failure.

        A failure with ``retry_delay`` goes back to the queue while attempts remain. A claim
        no longer held (cancelled, or lost and taken over) is a Conflict: an attempt
        finishes at most once, and only the current one.
        """
        with self._write() as conn:
            row = conn.execute(
                select(tasks).where(_held(task_id, claim_id)).with_for_update()
            ).first()
            if row is None:
                raise Conflict(
                    f"task {task_id} is not held by this claim (cancelled, finished, or its "
                    "claim expired and was taken over)"
                )
            if error is None:
                dropped = _end_task(conn, task_id, TaskState.SUCCEEDED, now, result=result)
            elif retry_delay is not None and row.attempts < row.max_attempts:
                dropped = _requeue(conn, row, now, retry_delay, error)
            else:
                dropped = _end_task(conn, task_id, TaskState.FAILED, now, error=error)
            row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
            return _tasks(conn, [row])[0], dropped

    def cancel_task(
        self, session_id: str, task_id: str, now: datetime
    ) -> tuple[Task, list[tuple[str, str]]] | None:
        """pending/running -> cancelled, at once: the running attempt loses its claim."""
        with self._write() as conn:
            row = conn.execute(
                select(tasks)
                .where(tasks.c.id == task_id, tasks.c.session_id == session_id)
                .with_for_update()
            ).first()
            if row is None:
                return None
            dropped: list[tuple[str, str]] = []
            if TaskState(row.state).active:
                dropped = _end_task(conn, task_id, TaskState.CANCELLED, now, error="cancelled")
            elif row.state != TaskState.CANCELLED:
                raise Conflict(f"task {task_id} has already {row.state}")
            row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
            return _tasks(conn, [row])[0], dropped

    def task_counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                state: int(count)
                for state, count in conn.execute(
                    select(tasks.c.state, func.count()).group_by(tasks.c.state)
                )
            }

    # -- admin and worker keys -------------------------------------------------------------

    def insert_admin_key(
        self,
        name: str,
        key_hash: str,
        now: datetime,
        role: str = "admin",
        expires_at: datetime | None = None,
    ) -> None:
        try:
            with self._write() as conn:
                conn.execute(
                    insert(admin_keys).values(
                        name=name,
                        key_hash=key_hash,
                        created_at=now,
                        role=role,
                        expires_at=expires_at,
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"a key named {name!r} already exists") from exc

    def admin_key_name(self, key_hash: str, role: str = "admin") -> str | None:
        with self._read() as conn:
            return conn.scalar(
                select(admin_keys.c.name).where(
                    admin_keys.c.key_hash == key_hash, admin_keys.c.role == role
                )
            )

    def find_key(self, key_hash: str) -> AdminKey | None:
        with self._read() as conn:
            row = conn.execute(select(admin_keys).where(admin_keys.c.key_hash == key_hash)).first()
        return None if row is None else _key(row)

    def touch_key(self, name: str, now: datetime, not_since: datetime) -> None:
        """Record a key's use, unless it was recorded after ``not_since`` (keeps reads cheap)."""
        with self._write() as conn:
            conn.execute(
                update(admin_keys)
                .where(
                    admin_keys.c.name == name,
                    or_(admin_keys.c.last_used_at.is_(None), admin_keys.c.last_used_at < not_since),
                )
                .values(last_used_at=now)
            )

    def list_admin_keys(self, role: str = "admin") -> list[AdminKey]:
        with self._read() as conn:
            return [
                _key(r)
                for r in conn.execute(
                    select(admin_keys).where(admin_keys.c.role == role).order_by(admin_keys.c.name)
                )
            ]

    def delete_admin_key(self, name: str, role: str = "admin") -> bool:
        with self._write() as conn:
            return (
                conn.execute(
                    delete(admin_keys).where(admin_keys.c.name == name, admin_keys.c.role == role)
                ).rowcount
                > 0
            )

    def count_admin_keys(self) -> int:
        with self._read() as conn:
            return (
                conn.scalar(
                    select(func.count()).select_from(admin_keys).where(admin_keys.c.role == "admin")
                )
                or 0
            )

    def table_row_counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                t.name: conn.scalar(select(func.count()).select_from(t)) or 0
                for t in (sessions, artifacts, admin_keys, leases, lease_artifacts, tasks)
            }

    # -- engine additions -------------------------------------------------------------------

    def closing_session_ids(self, after: str | None, limit: int) -> list[str]:
        """Sessions left ``closing``, in ID order, a page after ``after``."""
        query = select(sessions.c.id).where(sessions.c.state == SessionState.CLOSING)
        if after is not None:
            query = query.where(sessions.c.id > after)
        with self._read() as conn:
            return list(conn.scalars(query.order_by(sessions.c.id).limit(limit)))

    def deleting_artifacts(self, after: str | None, limit: int) -> list[tuple[str, str]]:
        """(session, artifact) of artifacts left ``deleting``, in artifact ID order, a page
        after ``after``."""
        query = select(artifacts.c.session_id, artifacts.c.id).where(
            artifacts.c.state == ArtifactState.DELETING
        )
        if after is not None:
            query = query.where(artifacts.c.id > after)
        with self._read() as conn:
            rows = conn.execute(query.order_by(artifacts.c.id).limit(limit))
            return [(r.session_id, r.id) for r in rows]

    def drop_sessions(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``drop_session`` for many ``closing`` sessions in one write transaction.

        Returns the number and bytes of the artifact records removed, by session, for the
        sessions this call removed (those still ``closing``; others are left alone).
        """
        if not session_ids:
            return {}
        with self._write() as conn:
            _lock_first(conn, select(sessions.c.id).where(sessions.c.id.in_(session_ids)))
            closing = list(
                conn.scalars(
                    select(sessions.c.id).where(
                        sessions.c.id.in_(session_ids), sessions.c.state == SessionState.CLOSING
                    )
                )
            )
            if not closing:
                return {}
            usage = {
                r.session_id: (int(r.n), int(r.total))
                for r in conn.execute(
                    select(
                        artifacts.c.session_id,
                        func.count().label("n"),
                        func.coalesce(func.sum(artifacts.c.size), 0).label("total"),
                    )
                    .where(artifacts.c.session_id.in_(closing))
                    .group_by(artifacts.c.session_id)
                )
            }
            lease_ids = select(leases.c.id).where(leases.c.session_id.in_(closing))
            conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id.in_(lease_ids)))
            conn.execute(delete(leases).where(leases.c.session_id.in_(closing)))
            own_tasks = select(tasks.c.id).where(tasks.c.session_id.in_(closing))
            _release_task_leases(conn, own_tasks)
            conn.execute(delete(tasks).where(tasks.c.session_id.in_(closing)))
            conn.execute(delete(artifacts).where(artifacts.c.session_id.in_(closing)))
            conn.execute(delete(sessions).where(sessions.c.id.in_(closing)))
        return {session_id: usage.get(session_id, (0, 0)) for session_id in closing}


# -- tasks: helpers that run inside a caller's transaction ------------------------------------

# Task leases last as long as the task is pending or running; its end releases them.
TASK_LEASE_EXPIRY = datetime(9999, 1, 1, tzinfo=UTC)


def task_producer(task_id: str) -> str:
    """The ``producer`` of a task's outputs; clients cannot forge it (no ':' allowed)."""
    return f"task:{task_id}"


def _inputs(conn: Connection, refs: Sequence[TaskInput], now: datetime) -> list[Artifact]:
    if not refs:
        return []
    live = set(
        conn.scalars(
            select(sessions.c.id).where(
                sessions.c.id.in_({r.session_id for r in refs}), live_session(now)
            )
        )
    )
    rows = {
        r.id: r
        for r in conn.execute(
            select(artifacts).where(
                artifacts.c.id.in_({r.artifact_id for r in refs}),
                artifacts.c.state == ArtifactState.READY,
            )
        )
    }
    found = []
    for ref in refs:
        row = rows.get(ref.artifact_id)
        if ref.session_id not in live or row is None or row.session_id != ref.session_id:
            raise NotFound(f"artifact {ref.artifact_id} not found")
        found.append(_artifact(row))
    return found


def _output(row: Any, removed: bool = False) -> TaskOutput:
    return TaskOutput(
        artifact_id=row.id,
        name=row.name,
        kind=row.kind,
        content_type=row.content_type,
        size=row.size or 0,
        sha256=row.sha256 or "",
        removed=removed,
    )


def _tasks(conn: Connection, rows: Sequence[Row[Any]]) -> list[Task]:
    """Tasks with their outputs: live ones while active, the recorded list once finished."""
    active = [task_producer(r.id) for r in rows if TaskState(r.state).active]
    current: dict[str, list[TaskOutput]] = {}
    if active:
        for a in conn.execute(
            select(artifacts)
            .where(artifacts.c.producer.in_(active), artifacts.c.state == ArtifactState.READY)
            .order_by(artifacts.c.id)
        ):
            current.setdefault(a.producer, []).append(_output(a))
    recorded = [o["artifact_id"] for r in rows if not TaskState(r.state).active for o in r.outputs]
    present: set[str] = set()
    for batch in _batched(recorded, 500):
        present.update(
            conn.scalars(
                select(artifacts.c.id).where(
                    artifacts.c.id.in_(batch), artifacts.c.state == ArtifactState.READY
                )
            )
        )
    found = []
    for r in rows:
        if TaskState(r.state).active:
            outputs = tuple(current.get(task_producer(r.id), ()))
        else:
            outputs = tuple(
                TaskOutput(**o, removed=o["artifact_id"] not in present) for o in r.outputs
            )
        found.append(
            Task(
                id=r.id,
                session_id=r.session_id,
                processor=r.processor,
                params=r.params,
                inputs=tuple(TaskInput(s, a) for s, a in r.inputs),
                state=TaskState(r.state),
                progress_done=r.progress_done,
                progress_total=r.progress_total,
                result=r.result,
                error=r.error,
                outputs=outputs,
                attempts=r.attempts,
                max_attempts=r.max_attempts,
                worker=r.worker,
                created_at=r.created_at,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
        )
    return found


def _batched(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _drop_outputs(conn: Connection, task_id: str, session_id: str) -> list[tuple[str, str]]:
    """Mark an unfinished attempt's outputs ``deleting``; the caller removes their bytes."""
    rows = conn.execute(
        update(artifacts)
        .where(
            artifacts.c.producer == task_producer(task_id),
            artifacts.c.session_id == session_id,
            artifacts.c.state == ArtifactState.READY,
        )
        .values(state=ArtifactState.DELETING)
        .returning(artifacts.c.session_id, artifacts.c.id)
    )
    return [(r.session_id, r.id) for r in rows]


def _admit(
    conn: Connection,
    session_id: str,
    size: int,
    quota_bytes: int | None,
    claim: tuple[str, str] | None,
) -> str | None:
    """Checks before new bytes become ready: the session is open (its row locked shared,
    against a concurrent close), the claim still holds the task, the quota has room.

    Returns the lease a task output joins (None for a plain upload).
    """
    state = conn.scalar(
        select(sessions.c.state).where(sessions.c.id == session_id).with_for_update(read=True)
    )
    if state != SessionState.OPEN:
        raise NotFound(f"session {session_id} not found")
    lease_id = None
    if claim is not None:
        task_id, claim_id = claim
        lease_id = conn.scalar(
            select(leases.c.id)
            .join(tasks, tasks.c.id == leases.c.task_id)
            .where(
                _held(task_id, claim_id),
                tasks.c.session_id == session_id,
                leases.c.session_id == session_id,
            )
        )
        if lease_id is None:
            raise Conflict(f"task {task_id} is not held by this claim")
    if quota_bytes is not None:
        _, used = _usage(conn, session_id)
        if used + size > quota_bytes:
            raise TooLarge(
                f"session quota of {quota_bytes} bytes would be exceeded "
                f"({used} in use, {size} uploaded)"
            )
    return lease_id


def _lock_first(conn: Connection, rows: Any, *, read: bool = False) -> None:
    """PostgreSQL: lock the rows a check is about before the statement that checks.

    Under READ COMMITTED a statement sees what was committed when it began; one that waits
    for a row lock and then re-checks its condition still reads its subqueries (leases) as
    of its start. Taking the lock in an earlier statement makes the check see every
    protector that held the row first: protectors (leases, tasks) lock what they protect
    exclusively, cleaners lock it before they look. SQLite has one writer at a time and
    needs none of this.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(rows.with_for_update(read=read)).all()


def _held(task_id: str, claim_id: str) -> ColumnElement[bool]:
    """The task is running under this claim: the one test every claimed operation makes."""
    return and_(
        tasks.c.id == task_id, tasks.c.claim_id == claim_id, tasks.c.state == TaskState.RUNNING
    )


def _refuse_task_lease(task_id: str | None) -> None:
    if task_id is not None:
        raise Conflict(f"this lease belongs to task {task_id}: it ends when the task does")


def _release_task_leases(conn: Connection, task_ids: Any) -> None:
    held = select(leases.c.id).where(leases.c.task_id.in_(task_ids))
    conn.execute(delete(lease_artifacts).where(lease_artifacts.c.lease_id.in_(held)))
    conn.execute(delete(leases).where(leases.c.task_id.in_(task_ids)))


def _end_task(
    conn: Connection,
    task_id: str,
    state: TaskState,
    now: datetime,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> list[tuple[str, str]]:
    """Finish a task: record its outputs (success) or drop them (otherwise); free its leases."""
    row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
    dropped: list[tuple[str, str]] = []
    outputs: list[dict[str, Any]] = []
    if state is TaskState.SUCCEEDED:
        outputs = [
            {k: v for k, v in asdict(_output(a)).items() if k != "removed"}
            for a in conn.execute(
                select(artifacts)
                .where(
                    artifacts.c.producer == task_producer(task_id),
                    artifacts.c.session_id == row.session_id,
                    artifacts.c.state == ArtifactState.READY,
                )
                .order_by(artifacts.c.id)
            )
        ]
        # Result retention counts from the task's end, not from when each output was written.
        conn.execute(
            update(artifacts)
            .where(artifacts.c.id.in_([o["artifact_id"] for o in outputs]))
            .values(ready_at=now)
        )
    else:
        dropped = _drop_outputs(conn, task_id, row.session_id)
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(
            state=state,
            result=result,
            error=None if error is None else error[:2000],
            outputs=outputs,
            claim_id=None,
            claimed_until=None,
            finished_at=now,
            progress_done=(
                row.progress_total
                if state is TaskState.SUCCEEDED and row.progress_total
                else row.progress_done
            ),
        )
    )
    _release_task_leases(conn, [task_id])
    return dropped


def _requeue(
    conn: Connection,
    row: Row[Any],
    now: datetime,
    retry_delay: Callable[[int], float],
    reason: str,
) -> list[tuple[str, str]]:
    """Back to the queue (its leases stay): a later attempt starts over, outputs dropped."""
    dropped = _drop_outputs(conn, row.id, row.session_id)
    conn.execute(
        update(tasks)
        .where(tasks.c.id == row.id)
        .values(
            state=TaskState.PENDING,
            claim_id=None,
            claimed_until=None,
            worker=None,
            error=reason[:2000],
            not_before=now + timedelta(seconds=retry_delay(row.attempts)),
        )
    )
    return dropped


def _reap_lost(
    conn: Connection, now: datetime, retry_delay: Callable[[int], float]
) -> list[tuple[str, str]]:
    """Running attempts whose claim ran out: their worker is gone. Retry or fail them."""
    dropped: list[tuple[str, str]] = []
    for row in conn.execute(
        select(tasks)
        .where(tasks.c.state == TaskState.RUNNING, tasks.c.claimed_until < now)
        .limit(100)
        # Replicas reap at once: each lost attempt is requeued by exactly one of them.
        .with_for_update(skip_locked=True)
    ).all():
        reason = (
            f"attempt {row.attempts} lost: worker {row.worker} stopped renewing its claim "
            f"(expired {row.claimed_until.isoformat()})"
        )
        if row.attempts < row.max_attempts:
            dropped += _requeue(conn, row, now, retry_delay, reason)
        else:
            dropped += _end_task(
                conn,
                row.id,
                TaskState.FAILED,
                now,
                error=f"{reason}; gave up after {row.attempts} attempts",
            )
    return dropped


__all__: Sequence[str] = ["Catalog"]
