"""Workers: claim tasks from the store and run their processors.

The same :class:`Worker` runs embedded in ``ephemera serve`` (threads beside the API) and as
its own process (``ephemera worker``, as many as wanted). Workers coordinate only through the
database: a claim is a row update in one transaction, so one task has one running attempt at
a time. Each worker renews its claims from a heartbeat thread; a worker that dies stops
renewing, and the next claim of any worker requeues its task (see ``Store.claim_task``).

Processors do CPU-bound work (OpenCV and NumPy release the GIL) on the worker's own threads,
never on the event loop of the API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from pydantic import ValidationError

from ephemera import ids
from ephemera.catalog import TASKS, Progress, Wakeup, task_producer
from ephemera.errors import Conflict, EphemeraError, StorageError
from ephemera.models import Artifact, ArtifactState, Claim, NewOutput, StorageClass
from ephemera.processors import Registry, TaskCancelled, TaskFailed

if TYPE_CHECKING:
    from ephemera.store import Store

log = logging.getLogger("ephemera.worker")

PROGRESS_WRITE_INTERVAL_S = 0.5
# Outputs waiting to be stored, at most: a processor that outruns the disk waits.
OUTPUT_QUEUE_BYTES = 64 * 1024 * 1024
# A batch waits this long for company (group commit): a transaction per output would cost
# more than the bytes themselves. Flushing cuts the wait short.
OUTPUT_LINGER_S = 0.05
OUTPUT_BATCH = 64


class OutputWriter:
    """Stores a task's in-memory outputs on a thread of its own, a batch per transaction.

    The processor goes on computing while earlier outputs are fsynced and committed; the
    worker calls :meth:`flush` before completing the task, so a task never succeeds with an
    output missing. The first error is kept and raised by the next ``submit`` or ``flush``.
    """

    def __init__(self, store: Store, task_id: str, claim_id: str) -> None:
        self._store = store
        self._task_id = task_id
        self._claim_id = claim_id
        self._queue: list[NewOutput] = []
        self._queued_bytes = 0
        # A batch is being written (its count, not its bytes: a batch may hold empty outputs).
        self._writing = False
        self._error: BaseException | None = None
        self._closed = False
        self._flushing = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, output: NewOutput) -> None:
        with self._cond:
            while (
                self._error is None
                and self._queued_bytes > 0
                and self._queued_bytes + len(output.data) > OUTPUT_QUEUE_BYTES
            ):
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._queue.append(output)
            self._queued_bytes += len(output.data)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"ephemera-outputs-{self._task_id[-8:]}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            try:
                while self._error is None and (self._queue or self._writing):
                    self._cond.wait()
            finally:
                self._flushing = False
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        """Drop what is still queued, wait for the batch being written, stop the thread."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                deadline = time.monotonic() + OUTPUT_LINGER_S
                while (
                    len(self._queue) < OUTPUT_BATCH
                    and not (self._flushing or self._closed)
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
                if self._closed:
                    return
                batch, self._queue = self._queue[:OUTPUT_BATCH], self._queue[OUTPUT_BATCH:]
                self._writing = True
            try:
                self._store.put_task_outputs(self._task_id, self._claim_id, batch)
            except BaseException as exc:
                with self._cond:
                    self._error = exc
                    # Nothing queued can be stored any more: the claim or the store failed.
                    batch += self._queue
                    self._queue = []
            finally:
                with self._cond:
                    self._queued_bytes -= sum(len(o.data) for o in batch)
                    self._writing = False
                    self._cond.notify_all()


class StoreTaskContext:
    """The context a processor runs with inside a worker: one claimed attempt."""

    def __init__(self, store: Store, claim: Claim) -> None:
        self._store = store
        self._claim = claim
        self._inputs = {a.id: a for a in claim.inputs}
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Progress steps not written yet, oldest first: the latest value of each whole
        # percent (see ``progress``).
        self._steps: list[Progress] = []
        self._step_percent: Progress | None = None
        # When progress was last written; None: never, the first step goes at once.
        self._progress_written: float | None = None
        # Held while the claim is written to, so that steps are recorded in order.
        self._write_lock = threading.Lock()
        self._outputs = OutputWriter(store, claim.task.id, claim.claim_id)

    @property
    def task_id(self) -> str:
        return self._claim.task.id

    @property
    def session_id(self) -> str:
        return self._claim.task.session_id

    @property
    def inputs(self) -> Sequence[Artifact]:
        return self._claim.inputs

    def input(self, artifact_id: str) -> Artifact:
        try:
            return self._inputs[artifact_id]
        except KeyError:
            raise TaskFailed(f"artifact {artifact_id} is not an input of this task") from None

    def open_input(self, artifact_id: str) -> BinaryIO:
        self.check_cancelled()
        self.input(artifact_id)
        try:
            _, stream = self._store.open_task_input(self.task_id, self._claim.claim_id, artifact_id)
        except Conflict:
            self._lost.set()
            raise TaskCancelled from None
        return stream

    def read_input(self, artifact_id: str) -> bytes:
        with self.open_input(artifact_id) as stream:
            return stream.read()

    def write_output(
        self,
        name: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        kind: str = "output",
        content_type: str | None = None,
    ) -> Artifact:
        """Store an output; bytes in memory are written in the background (see OutputWriter)."""
        self.check_cancelled()
        try:
            if not isinstance(data, bytes):
                self.flush()
                return self._store.put_task_output(
                    self.task_id,
                    self._claim.claim_id,
                    data,
                    name=name,
                    kind=kind,
                    content_type=content_type,
                )
            values = self._store.check_output(name, kind, content_type)
            artifact_id = ids.new_uuid7()
            self._outputs.submit(NewOutput(name, data, kind, content_type, artifact_id))
        except Conflict:
            self._lost.set()
            raise TaskCancelled from None
        now = self._store.clock.now()
        return Artifact(
            id=artifact_id,
            session_id=self.session_id,
            name=values["name"],
            kind=values["kind"],
            content_type=values["content_type"],
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            storage_class=StorageClass.PERSISTENT,
            state=ArtifactState.READY,
            created_at=now,
            expires_at=None,
            retain_until=None,
            producer=task_producer(self.task_id),
        )

    def flush(self) -> None:
        """Wait until every output is stored; raises what storing one raised."""
        try:
            self._outputs.flush()
        except Conflict:
            self._lost.set()
            raise TaskCancelled from None

    def close(self) -> None:
        self._outputs.close()

    def progress(self, done: int, total: int) -> None:
        """Record progress: each whole percent is an event, but the database is written at
        most once per ``PROGRESS_WRITE_INTERVAL_S`` (the steps since the last write go in one
        transaction); the worker's heartbeat thread writes steps left waiting, and the end of
        the attempt writes the rest with it."""
        percent = (done * 100 // total if total > 0 else 100, total)
        with self._lock:
            if self._steps and percent == self._step_percent:
                self._steps[-1] = (done, total)
            else:
                self._steps.append((done, total))
                self._step_percent = percent
        if self.progress_due():
            self.write_progress()
        self.check_cancelled()

    def progress_due(self) -> bool:
        """Steps are waiting and the last write is at least an interval old."""
        with self._lock:
            written = self._progress_written
            return bool(self._steps) and (
                written is None or time.monotonic() - written >= PROGRESS_WRITE_INTERVAL_S
            )

    def write_progress(self) -> None:
        """Write the waiting steps now (a heartbeat), unless another write took them."""
        self._beat(only_steps=True)

    @contextlib.contextmanager
    def final_progress(self) -> Iterator[list[Progress]]:
        """The steps not written yet, for the call that ends the attempt to record; nothing
        else writes progress meanwhile, and they count as written once that call returns."""
        with self._write_lock:
            steps = self._take_steps()
            yield steps
            with self._lock:
                del self._steps[: len(steps)]
                self._progress_written = time.monotonic()

    @property
    def cancelled(self) -> bool:
        return self._lost.is_set() or self._stop.is_set()

    @property
    def lost(self) -> bool:
        """The claim is gone: the task was cancelled, or another worker took it over."""
        return self._lost.is_set()

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelled

    def stop(self) -> None:
        """Ask the processor to stop at its next check (the worker is shutting down)."""
        self._stop.set()

    def heartbeat(self) -> None:
        """Renew the claim, with the steps waiting; marks the context lost if it is gone."""
        self._beat(only_steps=False)

    def _beat(self, *, only_steps: bool) -> None:
        if self._lost.is_set():
            return
        # A write under way renews the claim, or ends it: never wait behind one. The heartbeat
        # thread beats every running task in turn, and an attempt's last write can take long
        # (a failure deletes its outputs), which would hold up the claims of all the others.
        if not self._write_lock.acquire(blocking=False):
            return
        try:
            steps = self._take_steps()
            if only_steps and not steps:
                return
            try:
                self._store.heartbeat_task(self.task_id, self._claim.claim_id, progress_steps=steps)
            except Conflict:
                self._lost.set()
                return
            except StorageError:
                # A busy or briefly unreachable database: the next heartbeat tries again.
                log.warning("heartbeat for task %s failed", self.task_id, extra={"action": "beat"})
                return
            with self._lock:
                del self._steps[: len(steps)]
        finally:
            self._write_lock.release()

    def _take_steps(self) -> list[Progress]:
        """A copy of the waiting steps, to write; they stay waiting until written.

        A step of the same percent that comes meanwhile goes after them rather than in place
        of the last: that one may be in the write already, and is removed once written.
        """
        with self._lock:
            self._step_percent = None
            self._progress_written = time.monotonic()
            return list(self._steps)


class Worker:
    """Claims and runs tasks on ``concurrency`` threads until stopped."""

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int = 1,
        name: str | None = None,
        processors: Registry | None = None,
        poll_interval_s: float | None = None,
    ) -> None:
        """``poll_interval_s``: the safety poll of an idle worker (default ``worker_poll_s``);
        a submission wakes it sooner, in this process and, on PostgreSQL, in any other."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._processors = processors
        self.poll_interval_s = (
            store.settings.worker_poll_s if poll_interval_s is None else poll_interval_s
        )
        self._wakeups: list[Wakeup] = []
        self._stopping = threading.Event()
        # Set once no task runs any more: the heartbeat thread renews claims until then.
        self._idle = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, StoreTaskContext] = {}
        self._running_lock = threading.Lock()
        # Past its grace period, stopping: a task claimed now stops at once.
        self._halting = False

    @property
    def processors(self) -> Registry:
        return self._processors if self._processors is not None else self.store.processors

    def start(self) -> None:
        self._stopping.clear()
        self._idle.clear()
        self._halting = False
        names = [f"ephemera-worker-{i}" for i in range(self.concurrency)]
        self._threads = [
            threading.Thread(target=self._loop, name=name, daemon=True) for name in names
        ]
        self._threads.append(
            threading.Thread(target=self._heartbeats, name="ephemera-heartbeat", daemon=True)
        )
        for thread in self._threads:
            thread.start()
        log.info(
            "worker %s started: %d threads, processors %s",
            self.name,
            self.concurrency,
            ", ".join(sorted(self.processors)),
            extra={"action": "start"},
        )

    def stop(self, timeout_s: float = 30) -> None:
        """Stop claiming; give running tasks ``timeout_s`` to finish, then stop them.

        A stopped task goes back to the queue at once (its attempt counts).
        """
        self._stopping.set()
        for wakeup in list(self._wakeups):
            wakeup.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.name.startswith("ephemera-worker"):
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._running_lock:
            # A claim still in flight is stopped as it starts (see ``run``).
            self._halting = True
            running = list(self._running.values())
        for ctx in running:
            ctx.stop()
        for thread in self._loops():
            thread.join(5)
        self._idle.set()
        for thread in self._threads:
            thread.join(5)
        log.info("worker %s stopped", self.name, extra={"action": "stop"})

    def run_one(self) -> bool:
        """Claim one task and run it in this thread; False if there was none."""
        claim = self.store.claim_task(self.name, list(self.processors))
        if claim is None:
            return False
        self.run(claim)
        return True

    def run(self, claim: Claim) -> None:
        task = claim.task
        ctx = StoreTaskContext(self.store, claim)
        with self._running_lock:
            self._running[task.id] = ctx
            if self._halting:
                ctx.stop()
        started = time.perf_counter()
        try:
            outcome = self._execute(ctx, claim)
        finally:
            ctx.close()
            with self._running_lock:
                self._running.pop(task.id, None)
        log.info(
            "task %s (%s) %s in %.3fs",
            task.id,
            task.processor,
            outcome,
            time.perf_counter() - started,
            extra={"action": "task", "task": task.id, "outcome": outcome},
        )

    def _execute(self, ctx: StoreTaskContext, claim: Claim) -> str:
        task, store = claim.task, self.store
        processor = self.processors[task.processor]
        try:
            params = processor.params_model.model_validate(task.params)
            result = processor.run(ctx, params)
            # A result that is not JSON must fail here, not in the database driver.
            json.dumps(result, allow_nan=False)
            ctx.flush()
            ctx.check_cancelled()
            with ctx.final_progress() as steps:
                store.complete_task(task.id, claim.claim_id, result, progress_steps=steps)
            return "succeeded"
        except TaskCancelled:
            if ctx.lost:
                return "abandoned (claim lost or task cancelled)"
            return self._finish(ctx, claim, "worker stopped", retry=True)
        except TaskFailed as exc:
            return self._finish(ctx, claim, exc.message)
        except ValidationError as exc:
            return self._finish(ctx, claim, f"processor {task.processor} cannot run: {exc}")
        except (StorageError, OSError) as exc:
            return self._finish(ctx, claim, f"storage error: {exc}", retry=True)
        except Conflict:
            # The claim was lost between the processor's end and completion.
            return "abandoned (claim lost or task cancelled)"
        except EphemeraError as exc:
            # Say, an output name the store refuses: the processor's fault, not the input's.
            return self._finish(ctx, claim, f"{type(exc).__name__}: {exc.message}")
        except Exception as exc:
            log.exception("task %s raised", task.id, extra={"action": "task"})
            return self._finish(ctx, claim, f"{type(exc).__name__}: {exc}")

    def _finish(self, ctx: StoreTaskContext, claim: Claim, error: str, retry: bool = False) -> str:
        try:
            with ctx.final_progress() as steps:
                task = self.store.fail_task(
                    claim.task.id, claim.claim_id, error, retry=retry, progress_steps=steps
                )
        except Conflict:
            return "abandoned (claim lost or task cancelled)"
        return "requeued" if task.state == "pending" else "failed"

    def _loop(self) -> None:
        with self.store.catalog.notifier.subscribe(TASKS) as wakeup:
            self._wakeups.append(wakeup)
            try:
                while not self._stopping.is_set():
                    try:
                        if self.run_one():
                            continue
                    except Exception:
                        log.exception("worker loop failed", extra={"action": "claim"})
                    wakeup.wait(self.poll_interval_s)
            finally:
                self._wakeups.remove(wakeup)

    def _heartbeats(self) -> None:
        """Renew every running claim each third of its time to live (10 s at most); in
        between, write progress steps that have waited an interval (see ``progress``)."""
        renew_every = max(0.05, min(self.store.settings.task_claim_ttl_s / 3, 10.0))
        tick = min(renew_every, PROGRESS_WRITE_INTERVAL_S / 2)
        renew_at = time.monotonic() + renew_every
        while not self._idle.wait(tick):
            with self._running_lock:
                running = list(self._running.values())
            renew = time.monotonic() >= renew_at
            if renew:
                renew_at = time.monotonic() + renew_every
            for ctx in running:
                if renew:
                    ctx.heartbeat()
                elif ctx.progress_due():
                    ctx.write_progress()

    def _loops(self) -> list[threading.Thread]:
        return [t for t in self._threads if t.name.startswith("ephemera-worker")]
