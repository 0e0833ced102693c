"""The catalog: every SQL statement ephemera runs lives in this module.

Writes run in short transactions that take the write lock up front (``BEGIN IMMEDIATE`` on
SQLite; row locks on PostgreSQL), so two writers never deadlock on a lock upgrade.
A connection is checked out by one thread for one transaction and returned: connections are
never shared across threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from ephemera.catalog.schema import admin_keys, artifacts, sessions
from ephemera.errors import Conflict, SchemaOutOfDate, StorageError, TooLarge
from ephemera.models import (
    AdminKey,
    Artifact,
    ArtifactState,
    Session,
    SessionState,
    StorageClass,
)

MIGRATIONS = Path(__file__).parent / "migrations"


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


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, pool_pre_ping=self.dialect != "sqlite")
        # SQLite has one writer at a time. Writers of this process queue here, woken in turn,
        # instead of in SQLite's busy handler, which polls with growing sleeps.
        self._writer_turn: threading.Lock | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
            self._writer_turn = threading.Lock()

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {exc.__class__.__name__}") from exc

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
            raise StorageError(f"database error: {exc.__class__.__name__}") from exc

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
            raise StorageError(f"cannot reach the database: {exc.orig}") from exc
        return current, head

    def migrate(self) -> None:
        with self.engine.connect() as conn:
            command.upgrade(self._alembic_config(conn), "head")
            conn.commit()

    def prepare(self, *, migrate_empty: bool = True) -> None:
        """Migrate an empty database; refuse one that is behind (that takes ``migrate``)."""
        current, head = self.revisions()
        if current == head:
            return
        with self.engine.connect() as conn:
            has_tables = bool(inspect(conn).get_table_names())
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

    def insert_session(self, values: dict[str, Any]) -> Session:
        try:
            with self._write() as conn:
                conn.execute(insert(sessions).values(**values))
                row = conn.execute(select(sessions).where(sessions.c.id == values["id"])).one()
        except IntegrityError as exc:
            raise Conflict(f"session {values['id']} already exists") from exc
        return _session(row)

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

    def list_sessions(self, after: str | None, limit: int) -> list[Session]:
        usage = _ready_usage.subquery()
        query = (
            select(sessions, usage.c.artifact_count, usage.c.artifact_bytes)
            .outerjoin(usage, usage.c.session_id == sessions.c.id)
            .order_by(sessions.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(sessions.c.id > after)
        with self._read() as conn:
            return [
                _session(r, r.artifact_count or 0, r.artifact_bytes or 0)
                for r in conn.execute(query)
            ]

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

    def begin_close(self, session_id: str, now: datetime) -> Session | None:
        """open/closing -> closing; returns the session as it was, or None if it is gone."""
        with self._write() as conn:
            row = conn.execute(
                select(sessions).where(sessions.c.id == session_id).with_for_update()
            ).first()
            if row is None:
                return None
            count, total = _usage(conn, session_id)
            if row.state == SessionState.OPEN:
                conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id)
                    .values(state=SessionState.CLOSING, closing_since=now)
                )
        return _session(row, count, total)

    def drop_session(self, session_id: str) -> None:
        """Remove a closing session's records; its bytes must already be gone."""
        with self._write() as conn:
            conn.execute(delete(artifacts).where(artifacts.c.session_id == session_id))
            conn.execute(
                delete(sessions).where(
                    sessions.c.id == session_id, sessions.c.state == SessionState.CLOSING
                )
            )

    def session_ids_in_state(self, state: SessionState) -> list[str]:
        with self._read() as conn:
            return list(conn.scalars(select(sessions.c.id).where(sessions.c.state == state)))

    # -- artifacts ------------------------------------------------------------------------

    def insert_pending_artifact(self, values: dict[str, Any]) -> bool:
        """Insert a pending artifact if its session is live; False if it is not."""
        now = values["created_at"]
        with self._write() as conn:
            row = conn.execute(
                select(sessions.c.state, sessions.c.expires_at)
                .where(sessions.c.id == values["session_id"])
                .with_for_update(read=True)
            ).first()
            if row is None or row.state != SessionState.OPEN:
                return False
            if row.expires_at is not None and row.expires_at <= now:
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
    ) -> Artifact | None:
        """pending -> ready, with ``commit_bytes`` run inside the transaction.

        The session row is locked (shared) first, so a concurrent close either happens
        entirely before (then this returns None and nothing is committed) or entirely after
        (then it sees a ready artifact and removes its bytes). ``commit_bytes`` makes the
        bytes durable before the record says ``ready``.
        """
        with self._write() as conn:
            state = conn.scalar(
                select(sessions.c.state)
                .where(sessions.c.id == session_id)
                .with_for_update(read=True)
            )
            if state != SessionState.OPEN:
                return None
            if quota_bytes is not None:
                _, used = _usage(conn, session_id)
                if used + values["size"] > quota_bytes:
                    raise TooLarge(
                        f"session quota of {quota_bytes} bytes would be exceeded "
                        f"({used} in use, {values['size']} uploaded)"
                    )
            commit_bytes()
            done = conn.execute(
                update(artifacts)
                .where(artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.PENDING)
                .values(**values, state=ArtifactState.READY)
            )
            if done.rowcount != 1:
                return None
            row = conn.execute(select(artifacts).where(artifacts.c.id == artifact_id)).one()
        return _artifact(row)

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

    def mark_artifact_deleting(self, session_id: str, artifact_id: str) -> Artifact | None:
        """ready -> deleting (idempotent for one already deleting); None if there is none."""
        with self._write() as conn:
            row = conn.execute(
                select(artifacts)
                .where(
                    artifacts.c.id == artifact_id,
                    artifacts.c.session_id == session_id,
                    artifacts.c.state.in_([ArtifactState.READY, ArtifactState.DELETING]),
                )
                .with_for_update()
            ).first()
            if row is None:
                return None
            conn.execute(
                update(artifacts)
                .where(artifacts.c.id == artifact_id)
                .values(state=ArtifactState.DELETING)
            )
        return _artifact(row)

    def drop_artifact(self, artifact_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                delete(artifacts).where(
                    artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.DELETING
                )
            )

    def artifacts_in_state(self, state: ArtifactState) -> list[tuple[str, str]]:
        with self._read() as conn:
            return [
                (r.session_id, r.id)
                for r in conn.execute(
                    select(artifacts.c.session_id, artifacts.c.id).where(artifacts.c.state == state)
                )
            ]

    # -- admin keys -----------------------------------------------------------------------

    def insert_admin_key(self, name: str, key_hash: str, now: datetime) -> None:
        try:
            with self._write() as conn:
                conn.execute(
                    insert(admin_keys).values(name=name, key_hash=key_hash, created_at=now)
                )
        except IntegrityError as exc:
            raise Conflict(f"an admin key named {name!r} already exists") from exc

    def admin_key_name(self, key_hash: str) -> str | None:
        with self._read() as conn:
            return conn.scalar(select(admin_keys.c.name).where(admin_keys.c.key_hash == key_hash))

    def list_admin_keys(self) -> list[AdminKey]:
        with self._read() as conn:
            return [
                AdminKey(r.name, r.created_at, r.last_used_at)
                for r in conn.execute(select(admin_keys).order_by(admin_keys.c.name))
            ]

    def delete_admin_key(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute(delete(admin_keys).where(admin_keys.c.name == name)).rowcount > 0

    def count_admin_keys(self) -> int:
        with self._read() as conn:
            return conn.scalar(select(func.count()).select_from(admin_keys)) or 0

    def table_row_counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                t.name: conn.scalar(select(func.count()).select_from(t)) or 0
                for t in (sessions, artifacts, admin_keys)
            }


__all__: Sequence[str] = ["Catalog"]
