"""Artifacts: the pending -> ready -> deleting life of one artifact record.

An upload's two writes (its pending record, its commit) go through the group committer
(``groupcommit``): concurrent uploads share their write transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from ephemera.catalog import events
from ephemera.catalog.db import Database, lock_first
from ephemera.catalog.groupcommit import group_commit
from ephemera.catalog.idempotency import Completion, complete
from ephemera.catalog.imports import record_import
from ephemera.catalog.predicates import artifact_leased, live_session
from ephemera.catalog.rows import artifact_model
from ephemera.catalog.schema import artifacts, lease_artifacts, leases, sessions, tasks
from ephemera.catalog.tasks import held
from ephemera.catalog.usage import ready_usage
from ephemera.errors import Conflict, NotFound, TooLarge
from ephemera.models import Artifact, ArtifactState, ImportEntry, ImportOrigin, SessionState


def insert_pending_artifact(db: Database, values: dict[str, Any]) -> bool:
    """Insert a pending artifact if its session is live; False if it is not."""
    now = values["created_at"]

    def work(conn: Connection) -> bool:
        live = conn.scalar(
            select(live_session(now))
            .where(sessions.c.id == values["session_id"])
            .with_for_update(read=True)
        )
        if not live:
            return False
        conn.execute(insert(artifacts).values(**values, state=ArtifactState.PENDING))
        return True

    return group_commit(db).run(work)


def finalize_artifact(
    db: Database,
    artifact_id: str,
    session_id: str,
    values: dict[str, Any],
    quota_bytes: int | None,
    commit_bytes: Callable[[], object],
    claim: tuple[str, str] | None = None,
    completion: Completion[Artifact] | None = None,
) -> Artifact:
    """pending -> ready, with ``commit_bytes`` run inside the transaction (and
    ``completion`` recording the upload's Idempotency-Key, in it too).

    The session row is locked (shared) first, so a concurrent close either happens
    entirely before (then this raises NotFound and nothing is committed) or entirely
    after (then it sees a ready artifact and removes its bytes). Nothing the transaction
    writes is visible before it commits, and ``commit_bytes`` runs before that commit
    (its folder sync too, at the end of a shared transaction): ``ready`` is never seen
    without durable bytes.

    A task's output (``claim``: task ID, claim ID) commits only while that claim holds
    the task, and joins the task's lease in the same transaction.
    """

    def work(conn: Connection) -> Artifact:
        artifact = make_ready(conn, artifact_id, session_id, values, quota_bytes, claim)
        if completion is not None:
            complete(conn, completion, artifact)
        commit_bytes()
        return artifact

    return group_commit(db).run(work)


def finalize_import(
    db: Database,
    artifact_id: str,
    session_id: str,
    values: dict[str, Any],
    quota_bytes: int | None,
    commit_bytes: Callable[[], object],
    origin: ImportOrigin,
) -> tuple[Artifact, ImportEntry]:
    """``finalize_artifact`` of an imported file, with its ledger entry in the same
    transaction; both as written. An origin the session's ledger holds already is a
    Conflict, and nothing is committed (the bytes are not moved into place either)."""

    def work(conn: Connection) -> tuple[Artifact, ImportEntry]:
        artifact = make_ready(conn, artifact_id, session_id, values, quota_bytes, None)
        entry = record_import(
            conn, session_id, origin, artifact_id, values["sha256"], values["ready_at"]
        )
        commit_bytes()
        return artifact, entry

    duplicate = f"{origin.path[:200]!r} of this version is already imported"
    return group_commit(db).run(work, duplicate=duplicate)


def make_ready(
    conn: Connection,
    artifact_id: str,
    session_id: str,
    values: dict[str, Any],
    quota_bytes: int | None,
    claim: tuple[str, str] | None,
) -> Artifact:
    """The pending artifact marked ready, in the caller's transaction; the row as written."""
    lease_id = _admit(conn, session_id, values["size"], quota_bytes, claim)
    if lease_id is not None:
        conn.execute(insert(lease_artifacts).values(lease_id=lease_id, artifact_id=artifact_id))
    row = conn.execute(
        update(artifacts)
        .where(artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.PENDING)
        .values(**values, state=ArtifactState.READY)
        .returning(*artifacts.c)
    ).first()
    if row is None:
        raise NotFound(f"upload {artifact_id} was abandoned and has been removed")
    artifact = artifact_model(row)
    events.record(conn, [events.artifact_created(artifact)])
    return artifact


def insert_ready_artifact(
    db: Database,
    row: dict[str, Any],
    quota_bytes: int | None,
    commit_bytes: Callable[[], object],
) -> Artifact:
    """One artifact whose bytes are staged and synced, made ready with no pending record
    first (the order of ``finalize_artifact``), in a transaction shared with concurrent
    callers: a few statements for the whole group. A crash before the commit leaves only
    staged or unreferenced bytes."""
    made: Artifact = group_commit(db).run_batched(
        _insert_ready, _Ready(row, quota_bytes, commit_bytes)
    )
    return made


@dataclass(frozen=True)
class _Ready:
    row: dict[str, Any]
    quota_bytes: int | None
    commit_bytes: Callable[[], object]


def _insert_ready(conn: Connection, items: list[_Ready]) -> list[Artifact | Exception]:
    """Each item admitted as ``insert_pending_artifact`` and ``_admit`` do (its session live
    at the group's latest instant, its row locked shared; the quota), its bytes put in place,
    then all admitted rows inserted ready at once."""
    sids = sorted({item.row["session_id"] for item in items})
    now = max(item.row["created_at"] for item in items)
    live: dict[str, bool] = dict(
        conn.execute(
            select(sessions.c.id, live_session(now))
            .where(sessions.c.id.in_(sids))
            .with_for_update(read=True)
        ).all()
    )
    used: dict[str, int] = {}
    answers: list[Artifact | Exception | None] = []
    admitted: list[dict[str, Any]] = []
    for item in items:
        sid, size = item.row["session_id"], int(item.row["size"])
        if not live.get(sid):
            answers.append(NotFound(f"session {sid} not found"))
            continue
        if item.quota_bytes is not None:
            if sid not in used:
                used[sid] = ready_usage(conn, sid)[1]
            if used[sid] + size > item.quota_bytes:
                answers.append(_over_quota(item.quota_bytes, used[sid], size))
                continue
        try:
            item.commit_bytes()
        except Exception as exc:
            answers.append(exc)
            continue
        if sid in used:
            used[sid] += size
        admitted.append({"producer": None, **item.row, "state": ArtifactState.READY})
        answers.append(None)
    if not admitted:
        return [a for a in answers if a is not None]
    conn.execute(insert(artifacts), admitted)
    ids = [r["id"] for r in admitted]
    found = {
        r.id: artifact_model(r)
        for r in conn.execute(select(artifacts).where(artifacts.c.id.in_(ids)))
    }
    events.record(conn, [events.artifact_created(found[i]) for i in ids])
    return [
        found[item.row["id"]] if answer is None else answer
        for item, answer in zip(items, answers, strict=True)
    ]


def insert_ready_artifacts(
    db: Database,
    session_id: str,
    rows: Sequence[dict[str, Any]],
    quota_bytes: int | None,
    commit_bytes: Sequence[Callable[[], object]],
    claim: tuple[str, str] | None = None,
) -> list[Artifact]:
    """Several artifacts whose bytes are staged and synced, made ready in one transaction.

    The same ordering as ``finalize_artifact``, with no pending record first: a
    crash before the commit leaves only staged or unreferenced bytes, which orphan
    reconciliation removes. One transaction for a batch is what makes many small task
    outputs cheap.
    """
    total = sum(int(r["size"]) for r in rows)
    with db.write() as conn:
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
            r.id: artifact_model(r)
            for r in conn.execute(
                select(artifacts).where(artifacts.c.id.in_([r["id"] for r in rows]))
            )
        }
        made = [found[r["id"]] for r in rows]
        events.record(conn, [events.artifact_created(a) for a in made])
        return made


def delete_pending_artifact(db: Database, artifact_id: str) -> None:
    with db.write() as conn:
        conn.execute(
            delete(artifacts).where(
                artifacts.c.id == artifact_id, artifacts.c.state == ArtifactState.PENDING
            )
        )


def get_artifact(db: Database, session_id: str, artifact_id: str) -> Artifact | None:
    with db.read() as conn:
        return _ready(conn, session_id, artifact_id)


def claimed_input(
    db: Database, task_id: str, claim_id: str, artifact_id: str
) -> tuple[bool, Artifact | None]:
    """Whether ``claim_id`` holds the task, and its input ``artifact_id`` if it is one and
    ready: one read transaction, as a worker reads each input."""
    with db.read() as conn:
        inputs = conn.scalar(select(tasks.c.inputs).where(held(task_id, claim_id)))
        if inputs is None:
            return False, None
        session_id = next((s for s, a in inputs if a == artifact_id), None)
        if session_id is None:
            return True, None
        return True, _ready(conn, session_id, artifact_id)


def _ready(conn: Connection, session_id: str, artifact_id: str) -> Artifact | None:
    row = conn.execute(
        select(artifacts).where(
            artifacts.c.id == artifact_id,
            artifacts.c.session_id == session_id,
            artifacts.c.state == ArtifactState.READY,
        )
    ).first()
    return artifact_model(row) if row is not None else None


def list_artifacts(
    db: Database, session_id: str, kind: str | None, after: str | None, limit: int
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
    with db.read() as conn:
        return [artifact_model(r) for r in conn.execute(query)]


def mark_artifact_deleting(
    db: Database, session_id: str, artifact_id: str, now: datetime
) -> Artifact | None:
    """ready -> deleting (idempotent for one already deleting); None if there is none.

    An artifact that a valid lease protects is refused (Conflict).
    """
    with db.write() as conn:
        lock_first(
            conn,
            select(sessions.c.id).where(sessions.c.id == session_id),
            read=True,
        )
        lock_first(conn, select(artifacts.c.id).where(artifacts.c.id == artifact_id))
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
        if row.state == ArtifactState.READY:
            events.record(conn, [events.artifact_deleted(session_id, artifact_id, "request")])
    return artifact_model(row)


def deleting_artifacts(db: Database, after: str | None, limit: int) -> list[tuple[str, str]]:
    """(session, artifact) of artifacts left ``deleting``, in artifact ID order, a page
    after ``after``."""
    query = select(artifacts.c.session_id, artifacts.c.id).where(
        artifacts.c.state == ArtifactState.DELETING
    )
    if after is not None:
        query = query.where(artifacts.c.id > after)
    with db.read() as conn:
        rows = conn.execute(query.order_by(artifacts.c.id).limit(limit))
        return [(r.session_id, r.id) for r in rows]


def set_retention(
    db: Database, session_id: str, artifact_id: str, retain_until: datetime | None
) -> Artifact | None:
    with db.write() as conn:
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
    return artifact_model(row)


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
                held(task_id, claim_id),
                tasks.c.session_id == session_id,
                leases.c.session_id == session_id,
            )
        )
        if lease_id is None:
            raise Conflict(f"task {task_id} is not held by this claim")
    if quota_bytes is not None:
        _, used = ready_usage(conn, session_id)
        if used + size > quota_bytes:
            raise _over_quota(quota_bytes, used, size)
    return lease_id


def _over_quota(quota_bytes: int, used: int, size: int) -> TooLarge:
    return TooLarge(
        f"session quota of {quota_bytes} bytes would be exceeded ({used} in use, {size} uploaded)"
    )
