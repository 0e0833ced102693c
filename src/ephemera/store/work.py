"""Tasks, the worker's side: claim, heartbeat, read inputs, write outputs, end the attempt.

Everything here holds only while the claim does: a cancelled task, or one whose claim ran out
and was taken over, answers Conflict, and nothing the lost attempt writes counts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from ephemera import ids
from ephemera.blobs import BlobWriter, artifact_key
from ephemera.catalog import RESULT_KINDS, Progress, task_producer
from ephemera.config import Settings
from ephemera.context import Context
from ephemera.errors import (
    Conflict,
    EphemeraError,
    InvalidInput,
    NotFound,
    StorageError,
    TooLarge,
)
from ephemera.integrity import refuse_flagged
from ephemera.jsonvalues import check_json
from ephemera.models import Artifact, Claim, NewOutput, Task
from ephemera.removal import remove_artifacts
from ephemera.store.artifacts import open_blob
from ephemera.store.limits import MAX_TASK_JSON_BYTES
from ephemera.store.tasks import Processors
from ephemera.store.uploads import Upload, artifact_values, begin, chunks

log = logging.getLogger("ephemera.store")

Dropped = list[tuple[str, str]]
"""The (session, artifact) outputs a task's end marked ``deleting``, for the caller to remove."""

RETRY_DELAY_MAX_S = 300.0


def claim(
    ctx: Context,
    processors: Processors,
    worker: str,
    names: Sequence[str] | None,
    ttl_s: float | None,
) -> tuple[Claim | None, Dropped]:
    """Take the oldest runnable task of ``names`` (default: the registry's); see
    :meth:`Store.claim_task`."""
    if not worker or len(worker) > 200 or not worker.isprintable():
        raise InvalidInput("worker must be 1-200 printable characters")
    wanted = list(processors.registry) if names is None else list(names)
    if not wanted:
        return None, []
    now = ctx.clock.now()
    return ctx.catalog.claim_task(
        wanted,
        worker,
        ids.new_claim_id(),
        now,
        now + timedelta(seconds=_claim_ttl(ctx.settings, ttl_s)),
        _retry_delay(ctx.settings),
    )


def heartbeat(
    ctx: Context,
    task_id: str,
    claim_id: str,
    steps: Sequence[Progress],
    ttl_s: float | None,
) -> datetime:
    _check_steps(steps)
    until = ctx.clock.now() + timedelta(seconds=_claim_ttl(ctx.settings, ttl_s))
    if not ctx.catalog.heartbeat_task(task_id, claim_id, until, steps):
        raise _claim_lost(task_id)
    return until


def _check_steps(steps: Sequence[Progress]) -> None:
    for done, total in steps:
        if done < 0 or (total is not None and not 0 <= done <= total):
            raise InvalidInput("progress must satisfy 0 <= done <= total")


def _steps(progress: Progress | None, steps: Sequence[Progress]) -> list[Progress]:
    return [*steps, *([] if progress is None else [progress])]


def complete(
    ctx: Context,
    task_id: str,
    claim_id: str,
    result: Mapping[str, Any] | None,
    steps: Sequence[Progress] = (),
) -> Task:
    value = check_json(dict(result or {}), "result", max_bytes=MAX_TASK_JSON_BYTES)
    _check_steps(steps)
    task, _ = ctx.catalog.finish_task(task_id, claim_id, ctx.clock.now(), result=value, steps=steps)
    return task


def fail(
    ctx: Context,
    task_id: str,
    claim_id: str,
    error: str,
    retry: bool,
    steps: Sequence[Progress] = (),
) -> tuple[Task, Dropped]:
    _check_steps(steps)
    return ctx.catalog.finish_task(
        task_id,
        claim_id,
        ctx.clock.now(),
        error=error or "failed",
        retry_delay=_retry_delay(ctx.settings) if retry else None,
        steps=steps,
    )


def claimed_session(ctx: Context, task_id: str, claim_id: str) -> str:
    found = ctx.catalog.claimed_session(task_id, claim_id) if ids.is_task_id(task_id) else None
    if found is None:
        raise _claim_lost(task_id)
    return found


def task_input(ctx: Context, task_id: str, claim_id: str, artifact_id: str) -> Artifact:
    if not ids.is_task_id(task_id):
        raise _claim_lost(task_id)
    held, artifact = ctx.catalog.claimed_input(task_id, claim_id, artifact_id)
    if not held:
        raise _claim_lost(task_id)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id[:40]} is not an input of task {task_id}")
    refuse_flagged(artifact)
    return artifact


def check_output(ctx: Context, name: str, kind: str, content_type: str | None) -> dict[str, Any]:
    """The stored metadata of a task output with this name, kind and type; or InvalidInput."""
    if kind not in RESULT_KINDS:
        raise InvalidInput(f"a task output's kind is one of {', '.join(RESULT_KINDS)}")
    return artifact_values(ctx.settings, name, kind, content_type, None, None, ctx.clock.now())


def begin_output(
    ctx: Context,
    task_id: str,
    claim_id: str,
    *,
    name: str,
    kind: str,
    content_type: str | None,
    declared_size: int | None,
) -> Upload:
    """Start an output of a claimed task (streamed); it commits only while the claim holds."""
    values = check_output(ctx, name, kind, content_type)
    session_id = claimed_session(ctx, task_id, claim_id)
    values["producer"] = task_producer(task_id)
    return begin(ctx, session_id, values, ctx.clock.now(), declared_size, (task_id, claim_id))


def put_output(
    ctx: Context,
    task_id: str,
    claim_id: str,
    data: bytes | BinaryIO | Iterable[bytes],
    *,
    name: str,
    kind: str,
    content_type: str | None,
    chunk_size: int,
) -> Artifact:
    if isinstance(data, bytes):
        (artifact,) = put_outputs(
            ctx, task_id, claim_id, [NewOutput(name, data, kind, content_type)]
        )
        return artifact
    upload = begin_output(
        ctx,
        task_id,
        claim_id,
        name=name,
        kind=kind,
        content_type=content_type,
        declared_size=None,
    )
    with upload:
        for chunk in chunks(data, chunk_size):
            upload.write(chunk)
        return upload.commit()


def put_outputs(
    ctx: Context, task_id: str, claim_id: str, outputs: Sequence[NewOutput]
) -> list[Artifact]:
    """Store outputs held in memory: bytes staged and synced, then one transaction for all.

    Each output is still all or nothing (ready only with durable bytes); a batch costs
    one commit instead of two per output.
    """
    if not outputs:
        return []
    session_id = claimed_session(ctx, task_id, claim_id)
    ctx.volume.check_room()
    now = ctx.clock.now()
    rows: list[dict[str, Any]] = []
    writers: list[BlobWriter] = []
    keys: list[str] = []
    try:
        for out in outputs:
            values = check_output(ctx, out.name, out.kind, out.content_type)
            if len(out.data) > ctx.settings.max_upload_bytes:
                raise TooLarge(f"output {out.name!r} exceeds the upload limit")
            artifact_id = out.artifact_id or ids.new_uuid7()
            if not ids.is_artifact_id(artifact_id):
                raise InvalidInput(f"invalid artifact ID {artifact_id[:40]!r}")
            keys.append(artifact_key(session_id, artifact_id))
            writer = ctx.blobs.writer(keys[-1])
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
        return ctx.catalog.insert_ready_artifacts(
            session_id,
            rows,
            ctx.settings.session_quota_bytes,
            [w.commit for w in writers],
            (task_id, claim_id),
        )
    except BaseException:
        # Nothing was recorded: whatever bytes were staged or moved into place go again.
        for writer in writers:
            writer.abort()
        with contextlib.suppress(StorageError):
            ctx.blobs.delete_many(keys)
        raise


def _claim_ttl(settings: Settings, ttl_s: float | None) -> float:
    ttl = settings.task_claim_ttl_s if ttl_s is None else ttl_s
    if not 0 < ttl <= settings.lease_max_ttl_s:
        raise InvalidInput(f"ttl_s must be between 0 and {settings.lease_max_ttl_s}")
    return ttl


def _retry_delay(settings: Settings) -> Callable[[int], float]:
    """The wait before attempt ``attempts + 1``: the configured delay, doubling, capped."""

    def delay(attempts: int) -> float:
        doubling = float(2 ** max(attempts - 1, 0))
        return min(settings.task_retry_delay_s * doubling, RETRY_DELAY_MAX_S)

    return delay


def _claim_lost(task_id: str) -> Conflict:
    return Conflict(
        f"task {task_id[:40]} is not held by this claim (cancelled, finished, or its claim "
        "expired and was taken over)"
    )


class WorkMethods:
    """The worker's side of tasks in :class:`~ephemera.store.Store` (its base class): claim,
    heartbeat, read inputs, write outputs, end."""

    context: Context
    _processors: Processors

    def claim_task(
        self, worker: str, processors: Sequence[str] | None = None, *, ttl_s: float | None = None
    ) -> Claim | None:
        """Take the oldest runnable task of these processors (default: the registry's).

        The claim lasts ``ttl_s`` (default ``task_claim_ttl_s``) and is kept by heartbeats.
        A claim that runs out means the worker is lost: the task is retried, up to its
        ``max_attempts``, then fails with the reason.
        """
        claimed, dropped = claim(self.context, self._processors, worker, processors, ttl_s)
        self._remove_outputs(dropped)
        return claimed

    def heartbeat_task(
        self,
        task_id: str,
        claim_id: str,
        *,
        progress: Progress | None = None,
        ttl_s: float | None = None,
        progress_steps: Sequence[Progress] = (),
    ) -> datetime:
        """Renew a claim (and report progress); Conflict once the claim is no longer held.

        ``progress_steps``: progress reported since the last heartbeat, oldest first, before
        ``progress``; each one that changes the task's progress is an event, the last one is
        recorded. One transaction, however many steps.
        """
        steps = _steps(progress, progress_steps)
        return heartbeat(self.context, task_id, claim_id, steps, ttl_s)

    def complete_task(
        self,
        task_id: str,
        claim_id: str,
        result: Mapping[str, Any] | None = None,
        *,
        progress_steps: Sequence[Progress] = (),
    ) -> Task:
        """Succeed: the outputs written under this claim become the task's outputs.

        ``progress_steps``: progress not yet reported, recorded first in the same transaction
        (see ``heartbeat_task``).
        """
        return complete(self.context, task_id, claim_id, result, progress_steps)

    def fail_task(
        self,
        task_id: str,
        claim_id: str,
        error: str,
        *,
        retry: bool = False,
        progress_steps: Sequence[Progress] = (),
    ) -> Task:
        """Fail this attempt; with ``retry`` the task is queued again while attempts remain.

        ``progress_steps``: as for ``complete_task``."""
        task, dropped = fail(self.context, task_id, claim_id, error, retry, progress_steps)
        self._remove_outputs(dropped)
        return task

    def task_input(self, task_id: str, claim_id: str, artifact_id: str) -> Artifact:
        """One input of a claimed task (reference data included), while the claim holds."""
        return task_input(self.context, task_id, claim_id, artifact_id)

    def open_task_input(
        self, task_id: str, claim_id: str, artifact_id: str
    ) -> tuple[Artifact, BinaryIO]:
        artifact = self.task_input(task_id, claim_id, artifact_id)
        return artifact, open_blob(self.context, artifact)

    def check_output(
        self, name: str, kind: str = "output", content_type: str | None = None
    ) -> dict[str, Any]:
        """The stored metadata of a task output with this name, kind and type; or InvalidInput."""
        return check_output(self.context, name, kind, content_type)

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
        return begin_output(
            self.context,
            task_id,
            claim_id,
            name=name,
            kind=kind,
            content_type=content_type,
            declared_size=declared_size,
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
        return put_output(
            self.context,
            task_id,
            claim_id,
            data,
            name=name,
            kind=kind,
            content_type=content_type,
            chunk_size=chunk_size,
        )

    def put_task_outputs(
        self, task_id: str, claim_id: str, outputs: Sequence[NewOutput]
    ) -> list[Artifact]:
        """Store outputs held in memory: bytes staged and synced, then one transaction for all.

        Each output is still all or nothing (ready only with durable bytes); a batch costs
        one commit instead of two per output.
        """
        return put_outputs(self.context, task_id, claim_id, outputs)

    def _remove_outputs(self, dropped: Sequence[tuple[str, str]]) -> None:
        """Remove outputs a task's end marked ``deleting``. Never raises: the state change
        that marked them is committed, and what is left is finished by recovery and cleanup."""
        try:
            removal = remove_artifacts(self.context, dropped, "task", self.context.clock.now())
        except EphemeraError as exc:
            log.warning("task outputs left deleting: %s", exc.message, extra={"action": "task"})
            return
        for artifact_id, error in removal.failed.items():
            log.warning("output %s left deleting: %s", artifact_id, error, extra={"action": "task"})
