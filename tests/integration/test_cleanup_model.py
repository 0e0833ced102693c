"""The cleanup engine against a reference model, driven by random sequences of operations.

A Hypothesis state machine creates sessions, uploads (whole, and in flight), takes, renews
and releases leases, retains and deletes artifacts, closes sessions, moves an injectable clock
on (never sleeping), simulates crashes at the points the store's protocols name, and runs
every cleanup operation, each as a dry run immediately followed by the real run.

A plain-Python model of sessions, records, leases and files predicts every answer. After
every step the store must agree with the model (records, files, what the API shows), and:

1. no ``ready`` artifact of an open session lacks its bytes (checked against the files);
2. right after a real ``orphaned`` (or ``all``) run, no bytes lack a record, no staged file
   and no pending record is left, unless younger than the grace period;
3. nothing that a valid lease protected when a cleanup started was deleted by it;
4. a dry run reports exactly the items, counts and bytes of the real run that follows it
   (for ``all``, part by part), and changes nothing.

File times are taken by the filesystem from the real clock while the store reads the manual
clock, so after each step the machine stamps every file with the manual time of its last
write: the files then age with the manual clock, as they would on a real disk.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, event
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)
from sqlalchemy import and_, exists, or_, select

from ephemera import Conflict, NotFound, Settings, Store, Upload
from ephemera.blobs import session_prefix
from ephemera.catalog.schema import artifacts as artifacts_table
from ephemera.catalog.schema import lease_artifacts as lease_artifacts_table
from ephemera.catalog.schema import leases as leases_table
from ephemera.catalog.schema import sessions as sessions_table
from ephemera.cleanup import CleanupReport
from ephemera.ids import new_uuid7
from ephemera.testing import ManualClock

DAY = 86400
GRACE_S = 60
HIGH_WATER = 400
LOW_WATER = 200
RETENTION_DAYS = 1.0
TEMPORARY_TTL_S = 3600

POOL = ("s0", "s1", "s2", "s3")  # client-chosen session IDs, reused after a close
GHOSTS = ("g0",)  # folders with bytes but never a session record
IDLE_TIMEOUTS = (60, 600, 3600, None)
MAX_AGES = (None, 600, 7200)
EXPIRIES = (10, 60, 120, None)  # None: the configured temporary TTL
LEASE_TTLS = (30, 600, 3600)
RETENTIONS = (None, 30, 3600, 3 * DAY)  # None: stop retaining
STEPS = (1, 10, 30, 59, 61, 120, 600, 3600, 3601, DAY, 31 * DAY)
WAITS = st.sampled_from((0, 0, 11, 61, 121, 601, 3601))
# (kind, producer, temporary): which rules may select an artifact.
FLAVORS = (
    ("input", None, False),
    ("input", None, True),
    ("result", "job-1", False),
    ("output", "job-2", True),
    ("result", None, False),  # no producer: never an old result
    ("golden", "job-1", False),  # not a result kind
    ("golden", None, True),
)
SESSION_IDS = st.sampled_from(POOL)
# Sizes spread over 0-300 bytes (st.binary favours tiny ones, which never reach the quota).
CONTENTS = st.builds(
    lambda fill, size: bytes([fill]) * size, st.integers(0, 255), st.integers(0, 300)
)
Batch = list[tuple[bytes, tuple[str, str | None, bool], int | None]]
BATCHES = st.lists(
    st.tuples(CONTENTS, st.sampled_from(FLAVORS), st.sampled_from(EXPIRIES)),
    min_size=1,
    max_size=3,
)
Setup = tuple[int | None, int | None, Batch, str, int, int | None]
ALL_ORDER = ("idle-sessions", "expired", "old-results", "orphaned", "quota")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ns(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * DAY + delta.seconds) * 10**9 + delta.microseconds * 1000


# -- the reference model ----------------------------------------------------------------------


@dataclass
class MSession:
    token: str
    created_at: datetime
    last_activity: datetime
    idle_timeout_s: int | None
    max_age_s: int | None
    closing: bool = False

    def expires_at(self) -> datetime | None:
        """The earlier of the idle deadline and the end of the maximum age."""
        deadlines = []
        if self.idle_timeout_s is not None:
            deadlines.append(self.last_activity + timedelta(seconds=self.idle_timeout_s))
        if self.max_age_s is not None:
            deadlines.append(self.created_at + timedelta(seconds=self.max_age_s))
        return min(deadlines, default=None)

    def before_deadline(self, now: datetime) -> bool:
        deadline = self.expires_at()
        return deadline is None or now < deadline


@dataclass
class MArtifact:
    session_id: str
    data: bytes
    expires_at: datetime | None  # set for temporary artifacts only
    is_result: bool  # a result/output kind with a producer
    ready_at: datetime
    retain_until: datetime | None = None
    deleting: bool = False  # marked by a delete that was interrupted

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class MPending:
    session_id: str
    created_at: datetime


@dataclass
class MLease:
    session_id: str
    artifact_ids: tuple[str, ...]  # empty: the whole session
    expires_at: datetime


@dataclass
class MFile:
    size: int
    mtime: datetime


@dataclass
class World:
    """Every record and file the store should hold."""

    sessions: dict[str, MSession] = field(default_factory=dict)
    artifacts: dict[str, MArtifact] = field(default_factory=dict)  # ready or deleting
    pending: dict[str, MPending] = field(default_factory=dict)
    leases: dict[str, MLease] = field(default_factory=dict)
    blobs: dict[str, MFile] = field(default_factory=dict)  # "sessions/{sid}/{aid}"
    staged: dict[str, MFile] = field(default_factory=dict)  # name in the staging folder

    def live(self, session_id: str, now: datetime) -> bool:
        """Open, and before its deadline or kept alive past it by a valid lease."""
        session = self.sessions.get(session_id)
        return (
            session is not None
            and not session.closing
            and (session.before_deadline(now) or self.session_leased(session_id, now))
        )

    def session_leased(self, session_id: str, now: datetime) -> bool:
        return any(
            lease.session_id == session_id and lease.expires_at > now
            for lease in self.leases.values()
        )

    def artifact_leased(self, artifact_id: str, now: datetime) -> bool:
        artifact = self.artifacts[artifact_id]
        return any(
            lease.expires_at > now
            and (
                artifact_id in lease.artifact_ids
                or (not lease.artifact_ids and lease.session_id == artifact.session_id)
            )
            for lease in self.leases.values()
        )

    def session_retained(self, session_id: str, now: datetime) -> bool:
        return any(
            a.session_id == session_id and a.retain_until is not None and a.retain_until > now
            for a in self.artifacts.values()
        )

    def session_size(self, session_id: str) -> int:
        return sum(a.size for a in self.artifacts.values() if a.session_id == session_id)

    def ready_of(self, session_id: str) -> dict[str, MArtifact]:
        return {
            aid: a
            for aid, a in self.artifacts.items()
            if a.session_id == session_id and not a.deleting
        }

    def drop_session(self, session_id: str) -> None:
        """Close: the session's bytes, then every record of it."""
        self.sessions.pop(session_id, None)
        prefix = session_prefix(session_id)
        for table in (self.artifacts, self.pending, self.leases):
            for key in [k for k, v in table.items() if v.session_id == session_id]:
                del table[key]
        for key in [k for k in self.blobs if k.startswith(prefix)]:
            del self.blobs[key]

    def drop_artifact(self, artifact_id: str) -> None:
        artifact = self.artifacts.pop(artifact_id)
        self.blobs.pop(f"sessions/{artifact.session_id}/{artifact_id}", None)


# -- what a cleanup should report ---------------------------------------------------------------

Item = tuple[str, str, str | None, int, str]  # kind, id, session, size, rule


class Part(NamedTuple):
    operation: str
    items: list[Item]
    deleted_count: int
    deleted_size_bytes: int
    skipped_protected: int
    errors: list[tuple[str, str]]


@dataclass
class Tally:
    operation: str
    items: list[Item] = field(default_factory=list)
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def part(self) -> Part:
        return Part(
            self.operation,
            sorted(self.items, key=repr),
            len(self.items),
            sum(i[3] for i in self.items),
            self.skipped,
            sorted(self.errors),
        )


def parts_of(report: CleanupReport) -> list[Part]:
    reports = report.reports if report.operation == "all" else [report]
    return [
        Part(
            r.operation,
            sorted(((i.kind, i.id, i.session_id, i.size, i.rule) for i in r.items), key=repr),
            r.deleted_count,
            r.deleted_size_bytes,
            r.skipped_protected,
            sorted((e["target"], e["error"]) for e in r.errors),
        )
        for r in reports
    ]


@dataclass(frozen=True)
class Request:
    operation: str
    hours_old: float | None = None
    days_old: float | None = None
    session_id: str | None = None
    purge_missing: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {
            "hours_old": self.hours_old,
            "days_old": self.days_old,
            "session_id": self.session_id,
            "purge_missing": self.purge_missing,
        }


def predict(world: World, request: Request, now: datetime) -> list[Part]:
    """What a real run at ``now`` deletes, part by part; applies it to ``world``."""
    operations = ALL_ORDER if request.operation == "all" else (request.operation,)
    parts = []
    for operation in operations:
        tally = Tally(operation)
        if operation == "idle-sessions":
            _predict_idle(world, tally, request, now)
        elif operation == "session":
            assert request.session_id is not None
            _close_one(world, tally, request.session_id, "one", now)
        elif operation in ("expired", "old-results"):
            _predict_artifacts(world, tally, request, now)
        elif operation == "orphaned":
            _predict_orphaned(world, tally, request, now)
        elif operation == "quota":
            _predict_quota(world, tally, now)
        parts.append(tally.part())
    return parts


def _close_one(world: World, tally: Tally, session_id: str, rule: str, now: datetime) -> bool:
    session = world.sessions[session_id]
    if not session.closing and (
        world.session_leased(session_id, now) or world.session_retained(session_id, now)
    ):
        tally.skipped += 1
        return False
    size = world.session_size(session_id)
    rule = "closing" if session.closing else rule
    tally.items.append(("session", session_id, session_id, size, rule))
    world.drop_session(session_id)
    return True


def _predict_idle(world: World, tally: Tally, request: Request, now: datetime) -> None:
    for session_id in sorted(world.sessions):
        session = world.sessions[session_id]
        if session.closing:
            selected = True
        elif request.hours_old is not None:
            selected = session.last_activity <= now - timedelta(hours=request.hours_old)
        else:
            deadline = session.expires_at()
            selected = deadline is not None and deadline <= now
        if selected:
            _close_one(world, tally, session_id, "idle", now)


def _predict_artifacts(world: World, tally: Tally, request: Request, now: datetime) -> None:
    rule = tally.operation
    days = RETENTION_DAYS if request.days_old is None else request.days_old
    results_before = now - timedelta(days=days)
    for artifact_id in sorted(world.artifacts):
        a = world.artifacts[artifact_id]
        if rule == "expired":
            selected = a.expires_at is not None and a.expires_at <= now
        else:
            selected = a.is_result and a.ready_at <= results_before
        if not selected or (a.retain_until is not None and a.retain_until > now):
            continue
        if not a.deleting and world.artifact_leased(artifact_id, now):
            tally.skipped += 1
            continue
        tally.items.append(("artifact", artifact_id, a.session_id, a.size, rule))
        world.drop_artifact(artifact_id)


def _predict_orphaned(world: World, tally: Tally, request: Request, now: datetime) -> None:
    cutoff = now - timedelta(seconds=GRACE_S)
    for name, staged in sorted(world.staged.items()):
        if staged.mtime < cutoff:
            tally.items.append(("staged", name, None, staged.size, "staging-leftover"))
            del world.staged[name]
    for artifact_id, pending in sorted(world.pending.items()):
        if pending.created_at < cutoff:
            tally.items.append(("pending", artifact_id, pending.session_id, 0, "stale-pending"))
            del world.pending[artifact_id]
            world.blobs.pop(f"sessions/{pending.session_id}/{artifact_id}", None)
    for key, blob in sorted(world.blobs.items()):
        _, session_id, artifact_id = key.split("/")
        record = world.artifacts.get(artifact_id) or world.pending.get(artifact_id)
        recorded = record is not None and record.session_id == session_id
        if not recorded and blob.mtime < cutoff:
            tally.items.append(("blob", key, session_id, blob.size, "no-record"))
            del world.blobs[key]
    for artifact_id in sorted(world.artifacts):
        a = world.artifacts[artifact_id]
        if a.deleting:
            tally.items.append(
                ("artifact", artifact_id, a.session_id, a.size, "interrupted-delete")
            )
            world.drop_artifact(artifact_id)
        elif f"sessions/{a.session_id}/{artifact_id}" not in world.blobs:
            tally.errors.append(
                (f"artifact {artifact_id}", "integrity: ready record without bytes")
            )
            if request.purge_missing:
                tally.items.append(("artifact", artifact_id, a.session_id, 0, "missing-bytes"))
                world.drop_artifact(artifact_id)
    # A real run also drops lease rows that have expired: bookkeeping, not reported.
    for lease_id in [i for i, lease in world.leases.items() if lease.expires_at <= now]:
        del world.leases[lease_id]


def _predict_quota(world: World, tally: Tally, now: datetime) -> None:
    """Above the high-water mark, evict the least recently active unleased open sessions."""
    used = sum(a.size for a in world.artifacts.values())
    if used <= HIGH_WATER:
        return
    order = sorted((s.last_activity, sid) for sid, s in world.sessions.items() if not s.closing)
    for _, session_id in order:
        if used <= LOW_WATER:
            break
        if world.session_leased(session_id, now):
            tally.skipped += 1
            continue
        size = world.session_size(session_id)
        tally.items.append(("session", session_id, session_id, size, "quota"))
        world.drop_session(session_id)
        used -= size


# -- the machine --------------------------------------------------------------------------------


@dataclass
class OpenUpload:
    upload: Upload
    staged: str  # its file in the staging folder
    data: bytes


class CleanupMachine(RuleBasedStateMachine):
    artifacts: Bundle[tuple[str, str]] = Bundle("artifacts")
    leases: Bundle[tuple[str, str]] = Bundle("leases")
    uploads: Bundle[str] = Bundle("uploads")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ephemera-model-"))
        self.clock = ManualClock()
        self.settings = Settings(
            data_dir=self.dir,
            orphan_grace_s=GRACE_S,
            quota_high_water_bytes=HIGH_WATER,
            quota_low_water_bytes=LOW_WATER,
            result_retention_days=RETENTION_DAYS,
            temporary_ttl_s=TEMPORARY_TTL_S,
            activity_write_interval_s=0,
        )
        self.store = Store.open(self.settings, clock=self.clock)
        self.root = self.dir / "blobs"
        self.world = World()
        self.open_uploads: dict[str, OpenUpload] = {}
        self.checks = 0

    def teardown(self) -> None:
        try:
            for open_upload in self.open_uploads.values():
                open_upload.upload.abort()
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def _staging_names(self) -> set[str]:
        staging = self.root / "staging"
        return set(os.listdir(staging)) if staging.exists() else set()

    # -- sessions ---------------------------------------------------------------------------

    @initialize(
        target=artifacts,
        setups=st.lists(
            st.tuples(
                st.sampled_from(IDLE_TIMEOUTS),
                st.sampled_from(MAX_AGES),
                BATCHES,
                st.sampled_from(("none", "session", "first", "all")),
                st.sampled_from(LEASE_TTLS),
                st.sampled_from(RETENTIONS),
            ),
            min_size=2,
            max_size=2,
        ),
    )
    def start_with_two_sessions(self, setups: list[Setup]) -> MultipleResults[tuple[str, str]]:
        """Two sessions with a few artifacts each, maybe under a lease (of the session, of
        its first artifact, or of all of them), the last one maybe retained: most runs then
        exercise protection."""
        stored = []
        for sid, (idle, max_age, batch, leased, ttl, retained) in zip(POOL, setups, strict=False):
            self.create_session(sid, idle, max_age)
            artifacts = self._put(sid, batch)
            stored += artifacts
            if leased != "none":
                named = {"session": [], "first": artifacts[:1], "all": artifacts}[leased]
                self.take_lease(sid, ttl, named)
            if retained is not None and artifacts:
                self.retain_artifact(artifacts[-1], retained)
        return multiple(*stored)

    @rule(sid=SESSION_IDS, idle=st.sampled_from(IDLE_TIMEOUTS), max_age=st.sampled_from(MAX_AGES))
    def create_session(self, sid: str, idle: int | None, max_age: int | None) -> None:
        now = self.now
        earlier = self.world.sessions.get(sid)
        if earlier is not None and (
            self.world.live(sid, now) or self.world.session_leased(sid, now)
        ):
            with pytest.raises(Conflict):
                self.store.create_session(sid, idle_timeout_s=idle, max_age_s=max_age)
            return
        created = self.store.create_session(sid, idle_timeout_s=idle, max_age_s=max_age)
        if earlier is not None:
            self.world.drop_session(sid)  # whatever was left of the earlier one goes first
        self.world.sessions[sid] = MSession(created.token, now, now, idle, max_age)

    @rule(sid=SESSION_IDS)
    def touch_session(self, sid: str) -> None:
        session = self.world.sessions.get(sid)
        if session is None or not self.world.live(sid, self.now):
            with pytest.raises(NotFound):
                self.store.authenticate(sid, session.token if session else "wrong")
            return
        assert self.store.authenticate(sid, session.token) is None
        session.last_activity = self.now

    @rule(sid=SESSION_IDS, force=st.booleans())
    def close_session(self, sid: str, force: bool) -> None:
        now = self.now
        if sid not in self.world.sessions:
            with pytest.raises(NotFound):
                self.store.close_session(sid, force=force)
            return
        if not force and self.world.session_leased(sid, now):
            with pytest.raises(Conflict):
                self.store.close_session(sid)
            return
        ready = self.world.ready_of(sid)
        report = self.store.close_session(sid, force=force)
        assert (report.artifact_count, report.deleted_bytes) == (
            len(ready),
            sum(a.size for a in ready.values()),
        )
        self.world.drop_session(sid)

    # -- artifacts --------------------------------------------------------------------------

    @rule(target=artifacts, sid=SESSION_IDS, batch=BATCHES)
    def put_artifacts(self, sid: str, batch: Batch) -> MultipleResults[tuple[str, str]]:
        return multiple(*self._put(sid, batch))

    def _put(self, sid: str, batch: Batch) -> list[tuple[str, str]]:
        now = self.now
        stored = []
        for data, (kind, producer, temporary), expiry in batch:
            options: dict[str, Any] = {
                "name": "a.bin",
                "kind": kind,
                "producer": producer,
                "storage": "temporary" if temporary else "persistent",
                "expires_in_s": expiry if temporary else None,
            }
            if not self.world.live(sid, now):
                with pytest.raises(NotFound):
                    self.store.put_artifact(sid, data, **options)
                continue
            artifact_id = self.store.put_artifact(sid, data, **options).id
            expires_at = None
            if temporary:
                expires_at = now + timedelta(seconds=expiry or TEMPORARY_TTL_S)
            is_result = kind in ("result", "output") and producer is not None
            self.world.artifacts[artifact_id] = MArtifact(sid, data, expires_at, is_result, now)
            self.world.blobs[f"sessions/{sid}/{artifact_id}"] = MFile(len(data), now)
            stored.append((sid, artifact_id))
        return stored

    @rule(artifact=artifacts)
    def delete_artifact(self, artifact: tuple[str, str]) -> None:
        sid, aid = artifact
        a = self.world.artifacts.get(aid)
        if not self.world.live(sid, self.now) or a is None or a.session_id != sid:
            with pytest.raises(NotFound):
                self.store.delete_artifact(sid, aid)
        elif not a.deleting and self.world.artifact_leased(aid, self.now):
            with pytest.raises(Conflict):
                self.store.delete_artifact(sid, aid)
        else:
            self.store.delete_artifact(sid, aid)
            self.world.drop_artifact(aid)

    @rule(artifact=artifacts, seconds=st.sampled_from(RETENTIONS))
    def retain_artifact(self, artifact: tuple[str, str], seconds: int | None) -> None:
        sid, aid = artifact
        until = None if seconds is None else self.now + timedelta(seconds=seconds)
        a = self.world.artifacts.get(aid)
        if not self.world.live(sid, self.now) or a is None or a.session_id != sid or a.deleting:
            with pytest.raises(NotFound):
                self.store.retain_artifact(sid, aid, until)
            return
        assert self.store.retain_artifact(sid, aid, until).retain_until == until
        a.retain_until = until

    # -- uploads in flight ------------------------------------------------------------------

    @rule(target=uploads, sid=SESSION_IDS, data=CONTENTS)
    def start_upload(self, sid: str, data: bytes) -> str | MultipleResults[str]:
        now = self.now
        if not self.world.live(sid, now):
            with pytest.raises(NotFound):
                self.store.begin_upload(sid, name="slow.bin")
            return multiple()
        before = self._staging_names()
        upload = self.store.begin_upload(sid, name="slow.bin")
        upload.write(data)
        (staged,) = self._staging_names() - before
        aid = upload.artifact_id
        self.open_uploads[aid] = OpenUpload(upload, staged, data)
        self.world.pending[aid] = MPending(sid, now)
        self.world.staged[staged] = MFile(len(data), now)
        return aid

    @rule(aid=uploads, data=st.binary(min_size=1, max_size=100))
    def write_more(self, aid: str, data: bytes) -> None:
        open_upload = self.open_uploads.get(aid)
        if open_upload is None:
            return
        open_upload.upload.write(data)  # goes to the open file even if cleanup removed it
        open_upload.data += data
        staged = self.world.staged.get(open_upload.staged)
        if staged is not None:
            staged.size += len(data)
            staged.mtime = self.now

    @rule(aid=consumes(uploads))
    def commit_upload(self, aid: str) -> None:
        open_upload = self.open_uploads.pop(aid, None)
        if open_upload is None:
            return
        sid = open_upload.upload.session_id
        key = f"sessions/{sid}/{aid}"
        session = self.world.sessions.get(sid)
        if aid in self.world.pending and session is not None and not session.closing:
            open_upload.upload.commit()
            del self.world.pending[aid]
            self.world.blobs[key] = self.world.staged.pop(open_upload.staged)  # renamed
            self.world.artifacts[aid] = MArtifact(sid, open_upload.data, None, False, self.now)
            return
        # Abandoned: its record went with stale-pending cleanup or with its session.
        with pytest.raises(NotFound):
            open_upload.upload.commit()
        self.world.pending.pop(aid, None)
        self.world.staged.pop(open_upload.staged, None)
        self.world.blobs.pop(key, None)

    @rule(aid=consumes(uploads))
    def abort_upload(self, aid: str) -> None:
        open_upload = self.open_uploads.pop(aid, None)
        if open_upload is None:
            return
        open_upload.upload.abort()
        self.world.pending.pop(aid, None)
        self.world.staged.pop(open_upload.staged, None)
        self.world.blobs.pop(f"sessions/{open_upload.upload.session_id}/{aid}", None)

    # -- crashes at the points the protocols name -------------------------------------------

    @rule(aid=uploads)
    def crash_while_committing(self, aid: str) -> None:
        """The bytes were renamed into place, the transaction marking them ready never ran."""
        open_upload = self.open_uploads.get(aid)
        if open_upload is None:
            return
        sid = open_upload.upload.session_id
        session = self.world.sessions.get(sid)
        if (
            aid not in self.world.pending
            or session is None
            or session.closing
            or open_upload.staged not in self.world.staged
        ):
            return  # the commit would not get as far as moving the bytes
        open_upload.upload._writer.commit()
        del self.open_uploads[aid]
        self.world.blobs[f"sessions/{sid}/{aid}"] = self.world.staged.pop(open_upload.staged)

    @rule(sid=SESSION_IDS, swept=st.booleans())
    def crash_while_closing(self, sid: str, swept: bool) -> None:
        """``close_session(force=True)`` died after marking (and maybe after the sweep)."""
        session = self.world.sessions.get(sid)
        if session is None:
            return
        self.store.catalog.begin_close(sid, self.now, force=True)
        session.closing = True
        if swept:
            self.store.blobs.delete_prefix(session_prefix(sid))
            for key in [k for k in self.world.blobs if k.startswith(session_prefix(sid))]:
                del self.world.blobs[key]

    @rule(artifact=artifacts, swept=st.booleans())
    def crash_while_deleting(self, artifact: tuple[str, str], swept: bool) -> None:
        """``delete_artifact`` died after marking the record (and maybe after the bytes)."""
        sid, aid = artifact
        a = self.world.artifacts.get(aid)
        if not self.world.live(sid, self.now) or a is None or a.session_id != sid:
            return
        if not a.deleting and self.world.artifact_leased(aid, self.now):
            with pytest.raises(Conflict):
                self.store.catalog.mark_artifact_deleting(sid, aid, self.now)
            return
        assert self.store.catalog.mark_artifact_deleting(sid, aid, self.now) is not None
        a.deleting = True
        if swept:
            key = f"sessions/{sid}/{aid}"
            self.store.blobs.delete(key)
            self.world.blobs.pop(key, None)

    @rule(where=st.sampled_from(POOL + GHOSTS), size=st.integers(0, 300))
    def stray_blob(self, where: str, size: int) -> None:
        """Bytes under sessions/ that no record names (a crash's leftover)."""
        key = f"sessions/{where}/{new_uuid7()}"
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"s" * size)
        self.world.blobs[key] = MFile(size, self.now)

    @rule(size=st.integers(0, 300))
    def stray_staged(self, size: int) -> None:
        name = f"{uuid.uuid4().hex}.part"
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(b"p" * size)
        self.world.staged[name] = MFile(size, self.now)

    # -- leases -----------------------------------------------------------------------------

    @rule(
        target=leases,
        sid=SESSION_IDS,
        ttl=st.sampled_from(LEASE_TTLS),
        named=st.lists(artifacts, max_size=3),
    )
    def take_lease(
        self, sid: str, ttl: int, named: list[tuple[str, str]]
    ) -> tuple[str, str] | MultipleResults[tuple[str, str]]:
        now = self.now
        ids = [aid for _, aid in named]
        possible = self.world.live(sid, now) and all(
            aid in self.world.artifacts
            and self.world.artifacts[aid].session_id == sid
            and not self.world.artifacts[aid].deleting
            for aid in ids
        )
        if not possible:
            with pytest.raises(NotFound):
                self.store.take_lease(sid, ttl_s=ttl, artifact_ids=ids)
            return multiple()
        lease = self.store.take_lease(sid, ttl_s=ttl, artifact_ids=ids)
        assert lease.expires_at == now + timedelta(seconds=ttl)
        self.world.leases[lease.id] = MLease(sid, tuple(dict.fromkeys(ids)), lease.expires_at)
        return (sid, lease.id)

    @rule(lease=leases, ttl=st.sampled_from(LEASE_TTLS))
    def renew_lease(self, lease: tuple[str, str], ttl: int) -> None:
        sid, lid = lease
        known = self.world.leases.get(lid)
        if not self.world.live(sid, self.now) or known is None:
            with pytest.raises(NotFound):
                self.store.renew_lease(sid, lid, ttl_s=ttl)
        elif known.expires_at <= self.now:
            with pytest.raises(Conflict):
                self.store.renew_lease(sid, lid, ttl_s=ttl)
        else:
            renewed = self.store.renew_lease(sid, lid, ttl_s=ttl)
            assert renewed.expires_at == self.now + timedelta(seconds=ttl)
            known.expires_at = renewed.expires_at

    @rule(lease=leases)
    def release_lease(self, lease: tuple[str, str]) -> None:
        sid, lid = lease
        if not self.world.live(sid, self.now) or lid not in self.world.leases:
            with pytest.raises(NotFound):
                self.store.release_lease(sid, lid)
            return
        self.store.release_lease(sid, lid)
        del self.world.leases[lid]

    # -- time -------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from(STEPS))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # -- cleanup ----------------------------------------------------------------------------

    # Each cleanup rule first lets ``wait`` seconds pass, as between scheduled runs: without
    # it, time rarely passes between building state and cleaning it up.

    @rule(wait=WAITS, hours_old=st.sampled_from([None, None, 0.5, 2.0]))
    def cleanup_idle_sessions(self, wait: int, hours_old: float | None) -> None:
        self._cleanup(wait, Request("idle-sessions", hours_old=hours_old))

    @rule(wait=WAITS)
    def cleanup_expired(self, wait: int) -> None:
        self._cleanup(wait, Request("expired"))

    @rule(wait=WAITS, days_old=st.sampled_from([None, None, 0.01, 2.0]))
    def cleanup_old_results(self, wait: int, days_old: float | None) -> None:
        self._cleanup(wait, Request("old-results", days_old=days_old))

    @rule(wait=WAITS, purge_missing=st.booleans())
    def cleanup_orphaned(self, wait: int, purge_missing: bool) -> None:
        self._cleanup(wait, Request("orphaned", purge_missing=purge_missing))

    @rule(wait=WAITS)
    def cleanup_quota(self, wait: int) -> None:
        self._cleanup(wait, Request("quota"))

    @rule(
        wait=WAITS,
        hours_old=st.sampled_from([None, None, 2.0]),
        days_old=st.sampled_from([None, None, 2.0]),
        purge_missing=st.booleans(),
    )
    def cleanup_all(
        self, wait: int, hours_old: float | None, days_old: float | None, purge_missing: bool
    ) -> None:
        self._cleanup(wait, Request("all", hours_old, days_old, purge_missing=purge_missing))

    @rule(wait=WAITS, sid=SESSION_IDS)
    def cleanup_session(self, wait: int, sid: str) -> None:
        self.clock.advance(wait)
        if sid not in self.world.sessions:
            for dry_run in (True, False):
                with pytest.raises(NotFound):
                    self.store.cleanup("session", session_id=sid, dry_run=dry_run)
            return
        self._cleanup(0, Request("session", session_id=sid))

    def _cleanup(self, wait: int, request: Request) -> None:
        self.clock.advance(wait)
        now = self.now
        guarded_sessions, guarded_artifacts = self._protected_now()
        expected_world = copy.deepcopy(self.world)
        expected = predict(expected_world, request, now)

        before = self._snapshot()
        dry = self.store.cleanup(request.operation, dry_run=True, details=True, **request.kwargs())
        assert self._snapshot() == before, f"a dry run of {request.operation} changed the store"
        real = self.store.cleanup(request.operation, details=True, **request.kwargs())
        assert dry.dry_run
        assert not real.dry_run

        # 4. Dry-run fidelity: the same items, counts and bytes, part by part.
        dry_parts, real_parts = parts_of(dry), parts_of(real)
        assert dry_parts == real_parts, f"dry run != real run:\n{dry_parts}\n{real_parts}"
        assert (dry.deleted_count, dry.deleted_size_bytes) == (
            real.deleted_count,
            real.deleted_size_bytes,
        )
        # 3. Protection, and 2. no leak, checked on the database and the files alone.
        self._check_protected_survived(guarded_sessions, guarded_artifacts)
        if request.operation in ("orphaned", "all"):
            self._check_nothing_unreferenced(now)
        # The reference model agrees on what was deleted, and why.
        assert real_parts == expected, f"real run != model:\n{real_parts}\n{expected}"
        assert real.deleted_count == sum(p.deleted_count for p in expected)
        assert real.deleted_size_bytes == sum(p.deleted_size_bytes for p in expected)
        self.world = expected_world
        for part in expected:
            if part.deleted_count:
                event(f"{part.operation} deleted something")
            if part.skipped_protected:
                event(f"{part.operation} skipped something protected")

    # -- ground truth -----------------------------------------------------------------------

    def _protected_now(self) -> tuple[set[str], set[str]]:
        """From the database: open sessions and ready artifacts that a valid lease protects."""
        now = self.now
        valid = and_(
            leases_table.c.session_id == sessions_table.c.id, leases_table.c.expires_at > now
        )
        open_leased = select(sessions_table.c.id).where(
            sessions_table.c.state == "open", exists().where(valid)
        )
        covered = or_(
            exists().where(
                leases_table.c.session_id == artifacts_table.c.session_id,
                leases_table.c.scope == "session",
                leases_table.c.expires_at > now,
            ),
            exists().where(
                lease_artifacts_table.c.artifact_id == artifacts_table.c.id,
                lease_artifacts_table.c.lease_id == leases_table.c.id,
                leases_table.c.expires_at > now,
            ),
        )
        leased_artifacts = (
            select(artifacts_table.c.id)
            .join(sessions_table, sessions_table.c.id == artifacts_table.c.session_id)
            .where(sessions_table.c.state == "open", artifacts_table.c.state == "ready", covered)
        )
        with self.store.catalog.engine.connect() as conn:
            return set(conn.scalars(open_leased)), set(conn.scalars(leased_artifacts))

    def _check_protected_survived(self, sessions: set[str], artifact_ids: set[str]) -> None:
        with self.store.catalog.engine.connect() as conn:
            states = {r.id: r.state for r in conn.execute(select(sessions_table))}
            rows = {
                r.id: r
                for r in conn.execute(
                    select(artifacts_table).where(artifacts_table.c.id.in_(artifact_ids))
                )
            }
        for sid in sessions:
            assert states.get(sid) == "open", f"cleanup removed leased session {sid}"
        for aid in artifact_ids:
            row = rows.get(aid)
            assert row is not None, f"cleanup removed leased {aid}"
            assert row.state == "ready", f"cleanup marked leased {aid} {row.state}"
            path = self.root / "sessions" / row.session_id / aid
            assert path.is_file(), f"cleanup removed the bytes of leased {aid}"

    def _check_nothing_unreferenced(self, now: datetime) -> None:
        """Right after a real orphan pass, only young files may lack a record."""
        cutoff = to_ns(now - timedelta(seconds=GRACE_S))
        with self.store.catalog.engine.connect() as conn:
            records = {(r.session_id, r.id) for r in conn.execute(select(artifacts_table))}
            states = list(conn.scalars(select(artifacts_table.c.state)))
            pending_ages = list(
                conn.scalars(
                    select(artifacts_table.c.created_at).where(artifacts_table.c.state == "pending")
                )
            )
        sessions_dir = self.root / "sessions"
        for path in sessions_dir.rglob("*") if sessions_dir.exists() else ():
            if path.is_file() and (path.parent.name, path.name) not in records:
                age = path.stat().st_mtime_ns
                assert age >= cutoff, f"unreferenced {path.relative_to(self.root)} survived"
        staging = self.root / "staging"
        for path in staging.iterdir() if staging.exists() else ():
            assert path.stat().st_mtime_ns >= cutoff, f"staging leftover {path.name} survived"
        assert all(to_ns(created) >= cutoff for created in pending_ages), "stale pending left"
        assert "deleting" not in states, "an interrupted delete was not finished"

    def _snapshot(self) -> tuple[Any, ...]:
        with self.store.catalog.engine.connect() as conn:
            tables = tuple(
                sorted(tuple(r) for r in conn.execute(select(table)))
                for table in (sessions_table, artifacts_table, leases_table, lease_artifacts_table)
            )
        files = (
            sorted(
                (str(p.relative_to(self.root)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.root.rglob("*")
                if p.is_file()
            )
            if self.root.exists()
            else []
        )
        return (*tables, files)

    @invariant()
    def agrees_with_the_model(self) -> None:
        """After every step: ground truth first (1. no ready artifact without its bytes),
        then the files, the records and what the API shows against the model."""
        self._ready_artifacts_have_their_bytes()
        self._files_match_the_model()
        self._records_match_the_model()
        self._the_api_shows_the_model()

    def _files_match_the_model(self) -> None:
        """Same files, same sizes; each stamped with the manual time of its last write."""
        found: dict[str, Path] = {}
        sessions_dir = self.root / "sessions"
        if sessions_dir.exists():
            for path in sessions_dir.rglob("*"):
                if path.is_file():
                    found[path.relative_to(self.root).as_posix()] = path
        staged: dict[str, Path] = {}
        staging = self.root / "staging"
        if staging.exists():
            for path in staging.iterdir():
                assert path.is_file(), f"unexpected {path.name} in staging"
                staged[path.name] = path
        assert sorted(found) == sorted(self.world.blobs)
        assert sorted(staged) == sorted(self.world.staged)
        for paths, model in ((found, self.world.blobs), (staged, self.world.staged)):
            for name, path in paths.items():
                stat = path.stat()
                assert stat.st_size == model[name].size, name
                stamp = to_ns(model[name].mtime)
                if stat.st_mtime_ns != stamp:
                    os.utime(path, ns=(stamp, stamp))

    def _records_match_the_model(self) -> None:
        with self.store.catalog.engine.connect() as conn:
            sessions = {r.id: r for r in conn.execute(select(sessions_table))}
            rows = {r.id: r for r in conn.execute(select(artifacts_table))}
            leases = {r.id: r for r in conn.execute(select(leases_table))}
        world = self.world
        assert {
            sid: (r.state, r.last_activity_at, r.expires_at) for sid, r in sessions.items()
        } == {
            sid: ("closing" if s.closing else "open", s.last_activity, s.expires_at())
            for sid, s in world.sessions.items()
        }
        expected: dict[str, tuple[Any, ...]] = {
            aid: (p.session_id, "pending", None, None) for aid, p in world.pending.items()
        }
        for aid, a in world.artifacts.items():
            state = "deleting" if a.deleting else "ready"
            expected[aid] = (a.session_id, state, a.size, hashlib.sha256(a.data).hexdigest())
        assert {
            aid: (r.session_id, r.state, r.size, r.sha256) for aid, r in rows.items()
        } == expected
        assert {aid: r.retain_until for aid, r in rows.items() if r.state != "pending"} == {
            aid: a.retain_until for aid, a in world.artifacts.items()
        }
        assert {lid: (r.session_id, r.expires_at) for lid, r in leases.items()} == {
            lid: (lease.session_id, lease.expires_at) for lid, lease in world.leases.items()
        }

    def _ready_artifacts_have_their_bytes(self) -> None:
        """From the database and the files alone: ``ready`` in an open session means bytes."""
        query = (
            select(artifacts_table.c.id, artifacts_table.c.session_id, artifacts_table.c.sha256)
            .join(sessions_table, sessions_table.c.id == artifacts_table.c.session_id)
            .where(sessions_table.c.state == "open", artifacts_table.c.state == "ready")
        )
        with self.store.catalog.engine.connect() as conn:
            ready = [(r.id, r.session_id, r.sha256) for r in conn.execute(query)]
        for aid, sid, sha256 in ready:
            path = self.root / "sessions" / sid / aid
            assert path.is_file(), f"ready artifact {aid} has no bytes"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256

    def _the_api_shows_the_model(self) -> None:
        """Which sessions answer, with what counts; one session's listing per step (cost)."""
        now = self.now
        self.checks += 1
        for index, sid in enumerate(sorted(self.world.sessions)):
            if not self.world.live(sid, now):
                with pytest.raises(NotFound):
                    self.store.get_session(sid)
                continue
            ready = self.world.ready_of(sid)
            shown = self.store.get_session(sid)
            assert (shown.artifact_count, shown.total_bytes) == (
                len(ready),
                sum(a.size for a in ready.values()),
            )
            if index == self.checks % len(self.world.sessions):
                listed = self.store.list_artifacts(sid, limit=1000).items
                assert sorted(a.id for a in listed) == sorted(ready)


CleanupMachine.TestCase.settings = hypothesis_settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCleanupModel = CleanupMachine.TestCase
