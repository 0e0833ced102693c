"""Tasks: the queue, claims, heartbeats and the end of an attempt, with the leases a task holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, exists, insert, or_, select, update

from ephemera import ids
from ephemera.catalog import events
from ephemera.catalog.db import Database, announce
from ephemera.catalog.idempotency import Completion, complete
from ephemera.catalog.imports import claim_import_task
from ephemera.catalog.leases import release_task_leases
from ephemera.catalog.notify import TASKS
from ephemera.catalog.predicates import live_session
from ephemera.catalog.rows import artifact_model, task_output
from ephemera.catalog.schema import artifacts, lease_artifacts, leases, sessions, tasks
from ephemera.errors import Conflict, NotFound
from ephemera.models import Artifact, ArtifactState, Claim, Task, TaskInput, TaskOutput, TaskState

# Task leases last as long as the task is pending or running; its end releases them.
TASK_LEASE_EXPIRY = datetime(9999, 1, 1, tzinfo=UTC)

Progress = tuple[int, int | None]
"""A task's progress: done, and the total where known."""


def task_producer(task_id: str) -> str:
    """The ``producer`` of a task's outputs; clients cannot forge it (no ':' allowed)."""
    return f"task:{task_id}"


def held(task_id: str, claim_id: str) -> ColumnElement[bool]:
    """The task is running under this claim: the one test every claimed operation makes."""
    return and_(
        tasks.c.id == task_id, tasks.c.claim_id == claim_id, tasks.c.state == TaskState.RUNNING
    )


def claimed_session(db: Database, task_id: str, claim_id: str) -> str | None:
    """The session of the task that ``claim_id`` holds (one primary-key read)."""
    with db.read() as conn:
        return conn.scalar(select(tasks.c.session_id).where(held(task_id, claim_id)))


def task_inputs(db: Database, refs: Sequence[TaskInput], now: datetime) -> list[Artifact]:
    """The named ready artifacts of live sessions, in order; NotFound for a missing one."""
    with db.read() as conn:
        return _inputs(conn, refs, now)


def insert_task(
    db: Database,
    values: dict[str, Any],
    refs: Sequence[TaskInput],
    completion: Completion[Task] | None = None,
) -> Task:
    """Queue a task and take its leases: one in each session it touches, never expiring.

    The leases name the inputs (so they outlive expiry, cleanup and deletion) and, in the
    task's own session, later its outputs; the task's end releases them. ``completion``
    records the submission's Idempotency-Key in the same transaction.
    """
    with db.write() as conn:
        _lock_protected(conn, values, refs)
        task = _write_task(conn, values, refs)
        if completion is not None:
            complete(conn, completion, task)
        return task


def insert_follow_up(
    db: Database, values: dict[str, Any], refs: Sequence[TaskInput], artifact_id: str
) -> Task | None:
    """Queue the follow-up task of the import of ``artifact_id`` and record it on the ledger
    entry, in one transaction; None, and nothing queued, if the entry has a task already.

    The winner is decided before the task exists, so a losing caller's task never does.
    """
    with db.write() as conn:
        _lock_protected(conn, values, refs)
        if not claim_import_task(conn, values["session_id"], artifact_id, values["id"]):
            return None
        return _write_task(conn, values, refs)


def _lock_protected(conn: Connection, values: dict[str, Any], refs: Sequence[TaskInput]) -> None:
    """Lock what a new task protects; NotFound unless its session is live and inputs ready."""
    session_id, now = values["session_id"], values["created_at"]
    # Protector: lock every session it protects, then its inputs (see lock_first).
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


def _write_task(conn: Connection, values: dict[str, Any], refs: Sequence[TaskInput]) -> Task:
    task_id, session_id, now = values["id"], values["session_id"], values["created_at"]
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
    events.record(conn, [events.task_state(row)])
    announce(conn, TASKS)
    return _tasks(conn, [row])[0]


def get_task(db: Database, session_id: str, task_id: str) -> Task | None:
    with db.read() as conn:
        row = conn.execute(
            select(tasks).where(tasks.c.id == task_id, tasks.c.session_id == session_id)
        ).first()
        return None if row is None else _tasks(conn, [row])[0]


def list_tasks(
    db: Database, session_id: str, state: TaskState | None, after: str | None, limit: int
) -> list[Task]:
    query = select(tasks).where(tasks.c.session_id == session_id).order_by(tasks.c.id).limit(limit)
    if state is not None:
        query = query.where(tasks.c.state == state)
    if after is not None:
        query = query.where(tasks.c.id > after)
    with db.read() as conn:
        return _tasks(conn, list(conn.execute(query)))


def claim_task(
    db: Database,
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
    with db.read() as conn:
        work = conn.scalar(
            select(
                or_(
                    exists().where(
                        tasks.c.state == TaskState.PENDING,
                        tasks.c.processor.in_(processors),
                        tasks.c.not_before <= now,
                    ),
                    exists().where(tasks.c.state == TaskState.RUNNING, tasks.c.claimed_until < now),
                )
            )
        )
    if not work:
        return None, []
    with db.write() as conn:
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
                dropped += end_task(conn, task_id, TaskState.FAILED, now, error=exc.message)
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
            events.record(conn, [events.task_state(row)])
            return Claim(_tasks(conn, [row])[0], claim_id, until, tuple(inputs)), dropped
    return None, dropped


def heartbeat_task(
    db: Database,
    task_id: str,
    claim_id: str,
    until: datetime,
    steps: Sequence[Progress] = (),
) -> bool:
    """Extend a claim and record the progress ``steps`` reported since the last heartbeat
    (oldest first, the last one is the task's progress); False if the claim is no longer held.
    """
    values: dict[str, Any] = {"claimed_until": until}
    if steps:
        values["progress_done"], values["progress_total"] = steps[-1]
    with db.write() as conn:
        if steps:
            # Locked, so that two heartbeats of one task at once record one change.
            before = conn.execute(
                select(tasks.c.session_id, tasks.c.progress_done, tasks.c.progress_total)
                .where(held(task_id, claim_id))
                .with_for_update()
            ).first()
            if before is not None:
                _record_progress(conn, before, task_id, steps)
        done = conn.execute(update(tasks).where(held(task_id, claim_id)).values(**values))
        return done.rowcount == 1


def _record_progress(
    conn: Connection, before: Any, task_id: str, steps: Sequence[Progress]
) -> None:
    """An event per step that changes the progress (a heartbeat may repeat the last one);
    ``before``: the task's row (its session and progress) before these steps."""
    last = (before.progress_done, before.progress_total)
    new: list[events.NewEvent] = []
    for step in steps:
        if step != last:
            new.append(events.task_progress(before.session_id, task_id, *step))
            last = step
    events.record(conn, new)


def finish_task(
    db: Database,
    task_id: str,
    claim_id: str,
    now: datetime,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    retry_delay: Callable[[int], float] | None = None,
    steps: Sequence[Progress] = (),
) -> tuple[Task, list[tuple[str, str]]]:
    """End the attempt that ``claim_id`` holds: success (``error`` None) or failure.

    A failure with ``retry_delay`` goes back to the queue while attempts remain. A claim
    no longer held (cancelled, or lost and taken over) is a Conflict: an attempt
    finishes at most once, and only the current one. ``steps``: progress reported since
    the last heartbeat, recorded first (as ``heartbeat_task`` does), in the same transaction.
    """
    with db.write() as conn:
        row = conn.execute(select(tasks).where(held(task_id, claim_id)).with_for_update()).first()
        if row is None:
            raise Conflict(
                f"task {task_id} is not held by this claim (cancelled, finished, or its "
                "claim expired and was taken over)"
            )
        if steps:
            _record_progress(conn, row, task_id, steps)
            done, total = steps[-1]
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(progress_done=done, progress_total=total)
            )
        if error is None:
            dropped = end_task(conn, task_id, TaskState.SUCCEEDED, now, result=result)
        elif retry_delay is not None and row.attempts < row.max_attempts:
            dropped = _requeue(conn, row, now, retry_delay, error)
        else:
            dropped = end_task(conn, task_id, TaskState.FAILED, now, error=error)
        row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
        return _tasks(conn, [row])[0], dropped


def cancel_task(
    db: Database, session_id: str, task_id: str, now: datetime
) -> tuple[Task, list[tuple[str, str]]] | None:
    """pending/running -> cancelled, at once: the running attempt loses its claim."""
    with db.write() as conn:
        row = conn.execute(
            select(tasks)
            .where(tasks.c.id == task_id, tasks.c.session_id == session_id)
            .with_for_update()
        ).first()
        if row is None:
            return None
        dropped: list[tuple[str, str]] = []
        if TaskState(row.state).active:
            dropped = end_task(conn, task_id, TaskState.CANCELLED, now, error="cancelled")
        elif row.state != TaskState.CANCELLED:
            raise Conflict(f"task {task_id} has already {row.state}")
        row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
        return _tasks(conn, [row])[0], dropped


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
        found.append(artifact_model(row))
    return found


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
            current.setdefault(a.producer, []).append(task_output(a))
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
    ).all()
    events.record(conn, [events.artifact_deleted(r.session_id, r.id, "task") for r in rows])
    return [(r.session_id, r.id) for r in rows]


def end_task(
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
            {k: v for k, v in asdict(task_output(a)).items() if k != "removed"}
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
    release_task_leases(conn, [task_id])
    ended = conn.execute(select(tasks).where(tasks.c.id == task_id)).one()
    events.record(conn, [events.task_state(ended)])
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
    delay_s = retry_delay(row.attempts)
    conn.execute(
        update(tasks)
        .where(tasks.c.id == row.id)
        .values(
            state=TaskState.PENDING,
            claim_id=None,
            claimed_until=None,
            worker=None,
            error=reason[:2000],
            not_before=now + timedelta(seconds=delay_s),
        )
    )
    queued = conn.execute(select(tasks).where(tasks.c.id == row.id)).one()
    events.record(conn, [events.task_state(queued)])
    if delay_s <= 0:
        # Claimable now. A later retry is found by the idle workers' safety poll (at most
        # ``worker_poll_s`` after it is due): nothing wakes them at ``not_before``.
        announce(conn, TASKS)
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
            dropped += end_task(
                conn,
                row.id,
                TaskState.FAILED,
                now,
                error=f"{reason}; gave up after {row.attempts} attempts",
            )
    return dropped
