"""Tasks, the submitting side: the enabled processors, submit, look up, list and cancel.

A task holds a lease on its session and inputs until it ends; the worker's side (claim,
heartbeat, outputs, the end) is in :mod:`ephemera.store.work`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ephemera import ids
from ephemera.catalog import Completion
from ephemera.config import Settings
from ephemera.context import Context
from ephemera.errors import InvalidInput, NotFound
from ephemera.integrity import refuse_flagged
from ephemera.jsonvalues import check_json
from ephemera.models import Page, Task, TaskInput, TaskState
from ephemera.processors import Registry
from ephemera.store.access import ActivityWrites, authenticate
from ephemera.store.limits import MAX_TASK_INPUTS, MAX_TASK_JSON_BYTES, check_limit
from ephemera.store.paging import page
from ephemera.store.sessions import require_live


class Processors:
    """The processors the settings enable, loaded on first use (ProcessorUnavailable if one
    cannot load): loading imports them, which a store that runs no task never needs."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._registry: Registry | None = None
        self._lock = threading.Lock()

    @property
    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                self._registry = Registry.load(
                    self._settings.processors, external=self._settings.external_processors
                )
            return self._registry


def submit(
    ctx: Context,
    processors: Processors,
    activity: ActivityWrites,
    session_id: str,
    processor: str,
    inputs: Sequence[str | tuple[str, str]],
    params: Mapping[str, Any] | None,
    credentials: Mapping[str, str] | None,
    max_attempts: int | None,
    completion: Completion[Task] | None = None,
) -> Task:
    """Queue a task (see :meth:`Store.submit_task`)."""
    values, refs = _checked(
        ctx, processors, activity, session_id, processor, inputs, params, credentials, max_attempts
    )
    return ctx.catalog.insert_task(values, refs, completion)


def submit_follow_up(
    ctx: Context,
    processors: Processors,
    activity: ActivityWrites,
    session_id: str,
    artifact_id: str,
    processor: str,
    params: Mapping[str, Any],
) -> Task | None:
    """Queue the follow-up of an import, with its artifact as the only input, and record it
    on the ledger entry; None, and nothing queued, if the entry has a task already."""
    values, refs = _checked(
        ctx, processors, activity, session_id, processor, [artifact_id], params, None, None
    )
    return ctx.catalog.insert_follow_up(values, refs, artifact_id)


def _checked(
    ctx: Context,
    processors: Processors,
    activity: ActivityWrites,
    session_id: str,
    processor: str,
    inputs: Sequence[str | tuple[str, str]],
    params: Mapping[str, Any] | None,
    credentials: Mapping[str, str] | None,
    max_attempts: int | None,
) -> tuple[dict[str, Any], list[TaskInput]]:
    """The new task's row and its inputs, every check passed; InvalidInput or NotFound."""
    require_live(ctx, session_id)
    refs = [_task_input(session_id, item) for item in inputs]
    if len(refs) > MAX_TASK_INPUTS:
        raise InvalidInput(f"a task takes at most {MAX_TASK_INPUTS} inputs")
    for other in sorted({r.session_id for r in refs} - {session_id}):
        authenticate(ctx, activity, other, (credentials or {}).get(other, ""))
    attempts = ctx.settings.task_max_attempts if max_attempts is None else max_attempts
    if not 1 <= attempts <= 100:
        raise InvalidInput("max_attempts must be between 1 and 100")
    now = ctx.clock.now()
    artifacts = ctx.catalog.task_inputs(refs, now)
    for artifact in artifacts:
        refuse_flagged(artifact)
    checked = dict(params or {})
    if processor in ctx.settings.external_processors:
        pass  # run by an external worker, which checks its own params
    else:
        checked = processors.registry.validate(processor, checked, artifacts).model_dump(
            mode="json"
        )
    checked = check_json(checked, "params", max_bytes=MAX_TASK_JSON_BYTES)
    values: dict[str, Any] = {
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
    }
    return values, refs


def get(ctx: Context, session_id: str, task_id: str) -> Task:
    require_live(ctx, session_id)
    task = ctx.catalog.get_task(session_id, task_id) if ids.is_task_id(task_id) else None
    if task is None:
        raise NotFound(f"task {task_id[:40]} not found")
    return task


def list_tasks(
    ctx: Context,
    session_id: str,
    state: TaskState | str | None,
    cursor: str | None,
    limit: int,
) -> Page[Task]:
    require_live(ctx, session_id)
    limit = check_limit(limit)
    try:
        wanted = TaskState(state) if state is not None else None
    except ValueError:
        raise InvalidInput(f"unknown task state {str(state)[:20]!r}") from None
    if cursor is not None and not ids.is_task_id(cursor):
        raise InvalidInput("invalid cursor")
    rows = ctx.catalog.list_tasks(session_id, wanted, cursor, limit + 1)
    return page(rows, limit, lambda task: task.id)


def cancel(ctx: Context, session_id: str, task_id: str) -> tuple[Task, list[tuple[str, str]]]:
    """Cancel a pending or running task; the task, and the (session, artifact) outputs its
    end marked ``deleting``, for the caller to remove."""
    require_live(ctx, session_id)
    done = (
        ctx.catalog.cancel_task(session_id, task_id, ctx.clock.now())
        if ids.is_task_id(task_id)
        else None
    )
    if done is None:
        raise NotFound(f"task {task_id[:40]} not found")
    return done


def _task_input(session_id: str, item: str | tuple[str, str] | Sequence[str]) -> TaskInput:
    owner, artifact_id = (session_id, item) if isinstance(item, str) else tuple(item)
    if not ids.SESSION_ID_RE.fullmatch(owner) or not ids.is_artifact_id(artifact_id):
        raise NotFound(f"artifact {artifact_id[:40]} not found")
    return TaskInput(owner, artifact_id)
