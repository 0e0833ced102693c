"""Waiting for a task: what a waiter sees of it, from its events or, failing those, polls.

A waiter subscribes to the session's events first and reads the task after, so nothing that
happens between the two is missed; each event about the task then updates it in place (a
progress step, a state it runs in), so every step is seen in order even when the task runs
ahead of its events; the end of the task is read whole (its result and outputs come with
it). A ``reset`` (events were lost) is answered by reading the task again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from ephemera.client.errors import WaitTimeout
from ephemera.models import Event, Task, TaskState

ProgressCallback = Callable[[Task], object]


class TaskWatch:
    """One waiter's view of one task: calls ``on_progress`` on each change it sees, in
    order and once, and knows when waiting is over."""

    def __init__(
        self, task_id: str, timeout_s: float | None, on_progress: ProgressCallback | None
    ) -> None:
        self.task_id = task_id
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.on_progress = on_progress
        self.task: Task | None = None
        self._seen: tuple[object, ...] | None = None

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            state = self.task.state if self.task is not None else "unknown"
            raise WaitTimeout(f"task {self.task_id} still {state} after {self.timeout_s} s")

    def seen(self, task: Task) -> bool:
        """Take the task as it is now; True once it has finished."""
        now_seen = (task.state, task.progress_done, task.progress_total)
        # A step older than one already seen (it was read before its event came): skip it.
        older = (
            self._seen is not None
            and self.task is not None
            and task.state == self.task.state
            and task.progress_done < self.task.progress_done
        )
        if not older and now_seen != self._seen:
            self.task, self._seen = task, now_seen
            if self.on_progress is not None:
                self.on_progress(task)
        return not task.state.active

    def needs_reading(self, event: Event) -> bool:
        """True when the task must be read again: events were lost, or it has finished (its
        result and outputs come with the read)."""
        if event.type == "reset":
            return True
        return (
            event.type == "task.state"
            and event.data.get("task_id") == self.task_id
            and not TaskState(event.data["state"]).active
        )

    def stepped(self, event: Event) -> Task | None:
        """The task after a step of its own (a progress report, or a state it runs in),
        from the event alone: a read now could be ahead of the steps still on their way.
        None for any other event."""
        if event.data.get("task_id") != self.task_id or self.task is None:
            return None
        if event.type == "task.progress":
            return dataclasses.replace(
                self.task,
                progress_done=int(event.data["done"]),
                progress_total=event.data["total"],
            )
        if event.type == "task.state":
            state = TaskState(event.data["state"])
            task = dataclasses.replace(
                self.task,
                state=state,
                attempts=int(event.data.get("attempts", self.task.attempts)),
                error=event.data.get("error"),
            )
            if state is TaskState.PENDING:  # queued again: its progress starts over
                task = dataclasses.replace(task, progress_done=0, progress_total=None)
            return task
        return None
