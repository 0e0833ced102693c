"""The metadata schema. Migrations in ``migrations/versions`` must produce exactly this."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

if TYPE_CHECKING:
    from sqlalchemy.types import TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog")
        value = value.astimezone(UTC)
        # SQLite keeps text: store naive UTC so lexical order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONDocument(TypeDecorator[Any]):
    """JSON; JSONB on PostgreSQL. A decorator rather than ``with_variant(JSONB())``, so that
    PostgreSQL's dialect is imported only where PostgreSQL is used."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


JSONType = JSONDocument()

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False),
    Column("label", String(200)),
    Column("metadata", JSONType, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_activity_at", UTCDateTime(), nullable=False),
    Column("idle_timeout_s", Integer),
    Column("max_age_s", Integer),
    # Denormalised deadline (earlier of idle and max age) so expiry is one indexed range scan.
    Column("expires_at", UTCDateTime()),
    Column("closing_since", UTCDateTime()),
    # Each order the console lists sessions in is one of these indexes, read a page at a time
    # from a keyset position (the ID breaks ties): by state then deadline; by last activity
    # (also the quota's eviction order); by deadline; by creation.
    Index(None, "state", "expires_at", "id"),
    Index(None, "last_activity_at", "id"),
    Index(None, "expires_at", "id"),
    Index(None, "created_at", "id"),
    # ix_sessions_id_byte_order: see _declare_dialect_indexes.
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", BigInteger),
    Column("sha256", String(64)),
    Column("storage_class", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("ready_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
    Column("retain_until", UTCDateTime()),
    # What produced this artifact (a task, later); outputs with a producer age out as results.
    Column("producer", String(64)),
    # Integrity at rest: when the bytes last hashed to sha256, and what is wrong when they do
    # not ("corrupt": other bytes, "missing": none). A flagged artifact is never served.
    Column("verified_at", UTCDateTime()),
    Column("integrity", String(16)),
    Column("integrity_error", String(500)),
    Index(None, "session_id", "state", "kind"),
    Index(None, "producer"),
    # ix_artifacts_pending_created_at, ix_artifacts_flagged: see _declare_dialect_indexes.
    Index(None, "expires_at", "id"),
    Index(None, "ready_at", "id"),
    # Covers orphan reconciliation: a session's IDs and states without touching the table.
    Index(None, "session_id", "id", "state"),
    # The scrub resumes with the least recently verified.
    Index(None, "verified_at", "id"),
)

leases = Table(
    "leases",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("holder", String(200), nullable=False),
    # "session": protects the session and all its artifacts; "artifacts": the named ones.
    Column("scope", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    # Set when a task holds the lease: only the task's own end releases it.
    Column("task_id", String(36)),
    Index(None, "session_id", "expires_at"),
    Index(None, "expires_at"),
    Index(None, "task_id"),
)

lease_artifacts = Table(
    "lease_artifacts",
    metadata,
    Column("lease_id", String(36), ForeignKey("leases.id"), primary_key=True),
    Column("artifact_id", String(36), primary_key=True),
    Index(None, "artifact_id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", String(200)),
    Column("params", JSONType, nullable=False),
    Column("result", JSONType, nullable=False),
    Index(None, "action", "id"),
)

# Named locks with an expiry: one scheduler at a time across every process on one database.
locks = Table(
    "locks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Every API key (admin, worker, client), stored as a hash.
api_keys = Table(
    "api_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_used_at", UTCDateTime()),
    # "admin": everything; "worker": only the worker API (claim, heartbeat, finish tasks);
    # "client": creating sessions only.
    Column("role", String(16), nullable=False, server_default="admin"),
    Column("expires_at", UTCDateTime()),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("processor", String(100), nullable=False),
    Column("params", JSONType, nullable=False),
    # [[session_id, artifact_id], ...] in submission order; reference data may live elsewhere.
    Column("inputs", JSONType, nullable=False),
    Column("state", String(16), nullable=False),
    Column("progress_done", Integer, nullable=False),
    Column("progress_total", Integer),
    Column("result", JSONType),
    Column("error", String(2000)),
    # The outputs as they were when the task finished; they outlive the output artifacts.
    Column("outputs", JSONType, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("worker", String(200)),
    # A running attempt's secret: heartbeats, outputs and the finish must present it.
    Column("claim_id", String(64)),
    Column("claimed_until", UTCDateTime()),
    Column("not_before", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Index(None, "session_id", "id"),
    # ix_tasks_pending_created_at, ix_tasks_running_claimed_until: see _declare_dialect_indexes.
)

# The import ledger: each file version imported into a session and the artifact it became.
# Source and path may be longer than a PostgreSQL btree entry holds, so lookups go through
# sha256 keys of them; the entry outlives its artifact (no foreign key), not its session.
import_ledger = Table(
    "import_ledger",
    metadata,
    # The order of entries, and the cursor of their listing.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("source", String(1024), nullable=False),
    Column("path", String(4096), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    # sha256 of (source, path, size, mtime_ns): one file version.
    Column("origin_key", String(64), nullable=False),
    # sha256 of source, and of (source, path): its listing and its versions.
    Column("source_key", String(64), nullable=False),
    Column("path_key", String(64), nullable=False),
    Column("artifact_id", String(36), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("replaces", String(36)),
    Column("task_id", String(36)),
    Column("imported_at", UTCDateTime(), nullable=False),
    UniqueConstraint("session_id", "origin_key", name="uq_import_ledger_session_id_origin_key"),
    Index(None, "session_id", "path_key", "id"),
    Index(None, "session_id", "source_key", "id"),
    Index(None, "session_id", "artifact_id"),
)

# Idempotency-Key: one row per key of one caller on one route (``id`` hashes the three). While
# a request holds it (``holder``) it is a reservation until ``expires_at``; once the request
# created its resource, in the same transaction, the answer to replay until ``expires_at``.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    # sha256 of what the request said before its body (query, content type, a JSON body).
    Column("request_hash", String(64), nullable=False),
    # sha256 of an upload's body as stored (its bytes and its metadata), once known.
    Column("body_hash", String(64)),
    Column("holder", String(32)),
    Column("status", Integer),
    Column("response", Text),
    # A secret of the answer (a session's token), sealed with the caller's credential.
    Column("secret", String(200)),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index(None, "expires_at"),
)

# The keys that sign download links. Kept here so that every replica signs and verifies with
# the same keys and no setting has to be shared. The newest key (highest ``seq``) not revoked
# signs; every key not revoked verifies. A revoked key keeps its row (its ID is never issued
# again) but loses its secret.
link_keys = Table(
    "link_keys",
    metadata,
    # The order of issue: clocks of replicas (and a test's clock) may tie or disagree.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(16), nullable=False, unique=True),
    Column("secret", String(64)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)

# The event log of sessions (Server-Sent Events): the ID is the order and the SSE event ID.
# A row is written in the transaction of the change it describes; the log is pruned from its
# oldest end, so what is kept is always a suffix of the IDs. No foreign key: the closing
# event outlives its session's row.
events = Table(
    "events",
    metadata,
    # AUTOINCREMENT on SQLite: an ID is never reused, even after the newest rows are pruned.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("session_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", JSONType, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Index(None, "session_id", "id"),
    Index(None, "at"),
    sqlite_autoincrement=True,
)

# tus resumable uploads: an artifact whose bytes arrive over many requests. Only what a
# checkpoint recorded here counts (``upload_offset``, ``pieces``); one writer at a time holds
# the row (``writer``, ``generation``, ``heartbeat_at``), and every piece number a writer
# uses is reserved here first (``next_piece``), so a writer that lost its claim can never
# touch a piece the next one relies on.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    # None until the client declares it (creation-defer-length).
    Column("length", BigInteger),
    Column("upload_offset", BigInteger, nullable=False),
    # The Upload-Metadata as sent (decoded), checked at creation.
    Column("meta", JSONType, nullable=False),
    # "open" while bytes arrive; "done" once its artifact is ready.
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("artifact_id", String(36)),
    Column("writer", String(64)),
    Column("generation", Integer, nullable=False),
    Column("heartbeat_at", UTCDateTime()),
    # The claim (generation) that last recorded progress: its last piece may be continued
    # only by the claim right after it (no takeover since, so nobody else may still write it).
    Column("written_generation", Integer),
    Column("next_piece", Integer, nullable=False),
    # The blob store's record of where the bytes are (segments, parts, a tail).
    Column("pieces", JSONType, nullable=False),
    Index(None, "session_id", "id"),
    Index(None, "expires_at", "id"),
)


# Web console sign-ins. The browser holds a random cookie; only its hash is kept here, with
# the hash of the credential it was exchanged for (a key's or a session token's). That
# credential is looked up again at every request, so revoking the key, or the session
# ending, ends the sign-in with it; signing out deletes the row.
console_logins = Table(
    "console_logins",
    metadata,
    Column("id", String(64), primary_key=True),
    # "admin", "worker" (a read-only view) or "session" (one session's workspace).
    Column("role", String(16), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("session_id", String(64)),
    # The form token of this sign-in (synchroniser token against cross-site requests).
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index(None, "expires_at"),
)

# The store's size over time, one row per scheduler tick, kept for ``usage_retention_s``:
# what the console's overview draws.
usage_samples = Table(
    "usage_samples",
    metadata,
    Column("at", UTCDateTime(), primary_key=True),
    Column("sessions", Integer, nullable=False),
    Column("artifacts", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("temporary_bytes", BigInteger, nullable=False),
    Column("tasks_active", Integer, nullable=False),
)

# Where an incremental maintenance pass (orphan reconciliation, a slice per tick) resumes:
# ``position`` is the last key it finished ("" when a lap is complete).
cleanup_cursors = Table(
    "cleanup_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", String(255), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Artifact counts and bytes by (storage class, state), kept by triggers on ``artifacts`` so
# store-wide figures (the quota, stats, /metrics) are read without a scan; see
# ``catalog.totals``. The totals hold what has been folded; the log, appended by writers on
# PostgreSQL (one row per statement), holds deltas not folded yet.
artifact_totals = Table(
    "artifact_totals",
    metadata,
    Column("storage_class", String(16), primary_key=True),
    Column("state", String(16), primary_key=True),
    Column("artifacts", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

artifact_totals_log = Table(
    "artifact_totals_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("storage_class", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("artifacts", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)


# The indexes that take PostgreSQL's options are declared when the whole schema is first
# asked for (``metadata``: the migrations, database dumps), not at import: SQLAlchemy checks
# such options against the PostgreSQL dialect, and importing it is about a seventh of what
# a command such as ``ephemera cleanup expired`` on SQLite imports. Queries need only the
# tables, which are complete without them.
_tables = metadata
del metadata
_declaring = threading.Lock()
_declared: list[bool] = []  # [True] once declared


def _declare_dialect_indexes() -> None:
    # Orphan reconciliation pages through the IDs in byte order, the order of the blob
    # store's names, which a PostgreSQL collation such as en-US does not keep (it puts `b`
    # before `Z`). SQLite compares bytes already and needs none. (The collation travels
    # in ``postgresql_ops``: SQLAlchemy declares no collation on an index column.)
    Index("ix_sessions_id_byte_order", sessions.c.id, postgresql_ops={"id": 'COLLATE "C"'}).ddl_if(
        dialect="postgresql"
    )
    # Partial: only stale uploads are looked up by state. A full (state, ...) index is a trap:
    # without statistics SQLite takes it for `state = 'ready'` and scans every ready row.
    Index(
        "ix_artifacts_pending_created_at",
        artifacts.c.created_at,
        sqlite_where=text("state = 'pending'"),
        postgresql_where=text("state = 'pending'"),
    )
    # Flagged artifacts are few: /metrics counts them at every scrape without a table scan.
    Index(
        "ix_artifacts_flagged",
        artifacts.c.integrity,
        artifacts.c.state,
        sqlite_where=text("integrity IS NOT NULL"),
        postgresql_where=text("integrity IS NOT NULL"),
    )
    # The queue, in order; and running attempts by deadline, to find lost workers.
    Index(
        "ix_tasks_pending_created_at",
        tasks.c.created_at,
        tasks.c.id,
        sqlite_where=text("state = 'pending'"),
        postgresql_where=text("state = 'pending'"),
    )
    Index(
        "ix_tasks_running_claimed_until",
        tasks.c.claimed_until,
        sqlite_where=text("state = 'running'"),
        postgresql_where=text("state = 'running'"),
    )


def whole_metadata() -> MetaData:
    """The whole schema, every index declared (once, whichever thread asks first)."""
    with _declaring:
        if not _declared:
            _declare_dialect_indexes()
            _declared.append(True)
    return _tables


if not TYPE_CHECKING:  # for type checkers, ``metadata`` is the one assigned above

    def __getattr__(name: str) -> Any:
        if name == "metadata":
            return whole_metadata()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
