"""Recovery at start-up: finish what a crash interrupted (``closing`` sessions, ``deleting``
artifacts) through the one delete path.

It walks the marked items a page at a time (keyset paging, one set-based delete per page), so
memory and transactions stay small however much was left. An item whose bytes will not go
(the blob store refuses or is away) is logged, counted and left marked for the next run or
cleanup: recovery never stops start-up over one item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ephemera.cleanup.records import Rule
from ephemera.context import Context
from ephemera.errors import EphemeraError
from ephemera.removal import remove_artifacts, remove_sessions

log = logging.getLogger("ephemera.recovery")

BATCH = 500
T = TypeVar("T")


@dataclass(slots=True)
class Recovery:
    closed: int = 0
    deleted: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # "session ID" / "artifact ID" -> why


def recover(context: Context, *, batch_size: int = BATCH) -> Recovery:
    result = Recovery()
    _finish_closes(context, result, batch_size)
    _finish_deletes(context, result, batch_size)
    if result.failed:
        log.warning(
            "recovery left %d items for the next run or cleanup",
            len(result.failed),
            extra={"action": "recover"},
        )
    return result


def _finish_closes(context: Context, result: Recovery, batch_size: int) -> None:
    after: str | None = None
    while batch := _page(result, context.catalog.closing_session_ids, after, batch_size):
        after = batch[-1]
        try:
            removal = remove_sessions(context, batch, Rule.CLOSING, context.clock.now())
        except EphemeraError as exc:  # the database refused this page (e.g. a deadlock)
            for session_id in batch:
                _failed(result, f"session {session_id}", exc.message)
            continue
        result.closed += len(removal.removed)
        for session_id, error in removal.failed.items():
            _failed(result, f"session {session_id}", error)


def _finish_deletes(context: Context, result: Recovery, batch_size: int) -> None:
    after: str | None = None
    while batch := _page(result, context.catalog.deleting_artifacts, after, batch_size):
        after = batch[-1][1]
        try:
            removal = remove_artifacts(context, batch, Rule.INTERRUPTED_DELETE, context.clock.now())
        except EphemeraError as exc:
            for _session_id, artifact_id in batch:
                _failed(result, f"artifact {artifact_id}", exc.message)
            continue
        result.deleted += len(removal.removed)
        for artifact_id, error in removal.failed.items():
            _failed(result, f"artifact {artifact_id}", error)


def _page(
    result: Recovery, read: Callable[[str | None, int], list[T]], after: str | None, limit: int
) -> list[T]:
    """The next page, or none when the database will not list it: what is left stays marked
    for the next run or cleanup."""
    try:
        return read(after, limit)
    except EphemeraError as exc:
        _failed(result, "listing", exc.message)
        return []


def _failed(result: Recovery, target: str, error: str) -> None:
    result.failed[target] = error
    log.warning("recovery left %s: %s", target, error, extra={"action": "recover"})
