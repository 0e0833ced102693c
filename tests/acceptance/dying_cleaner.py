"""Run one cleanup on a store and tell each artifact it deleted; optionally die mid-batch.

``python -m tests.acceptance.dying_cleaner DATA_DIR OPERATION KILL_AFTER``: prints one JSON
line per deleted artifact as its hook tells it (so what a killed run reported survives it),
then the report. With ``KILL_AFTER`` > 0 the blob store SIGKILLs this process after that
many unlinks, part-way through the batch that crosses it, at the last instant the delete
protocol allows: once the cleanup's own thread waits for these unlinks (it has marked the
next batch and told every earlier one, and nothing more can happen before they end). An
engine that drops a batch's records before its bytes are gone has dropped them by then.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ephemera import Settings, Store
from ephemera.blobs import BlobStore
from ephemera.hooks import ArtifactDeleted


def told(event: ArtifactDeleted) -> None:
    line = {"session_id": event.session_id, "id": event.artifact_id, "size": event.size}
    print(json.dumps({"deleted": line}), flush=True)


class DyingBlobs:
    """The local blob store, until ``kill_after`` unlinks: then the process is killed."""

    def __init__(self, blobs: BlobStore, kill_after: int) -> None:
        self._blobs = blobs
        self._kill_after = kill_after
        self._unlinked = 0

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        if self._kill_after and self._unlinked + len(keys) > self._kill_after:
            # The local store unlinks folder by folder, by name: this is its order.
            first = sorted(keys)[: self._kill_after - self._unlinked]
            self._blobs.delete_many(first)
            waited = _until_waiting_for_unlinks(threading.main_thread(), timeout=60)
            line = {"killed_after": len(first), "of": len(keys), "waited": waited}
            print(json.dumps(line), file=sys.stderr)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        failed = self._blobs.delete_many(keys)
        self._unlinked += len(keys)
        return failed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)


# Where a thread blocks on the unlink thread's work: for one batch's bytes (a done future
# answers without waiting), or for the pool to end.
_BLOCKS = {("threading.py", "wait"), ("threading.py", "_wait_for_tstate_lock")}
_ON_UNLINKS = {("_base.py", "result"), ("thread.py", "shutdown")}


def _until_waiting_for_unlinks(thread: threading.Thread, timeout: float) -> bool:
    """Wait until ``thread`` is blocked on the unlink thread's work (True), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or 0)
        if frame is not None and _where(frame) in _BLOCKS:
            while frame is not None and _where(frame) not in _ON_UNLINKS:
                frame = frame.f_back
            if frame is not None:
                return True
        time.sleep(0.001)
    return False


def _where(frame: FrameType) -> tuple[str, str]:
    return Path(frame.f_code.co_filename).name, frame.f_code.co_name


def main(data_dir: Path, operation: str, kill_after: int) -> None:
    opened = Store.open(Settings(data_dir=data_dir))
    store = Store(opened.catalog, DyingBlobs(opened.blobs, kill_after), opened.settings)
    store.hooks.on_artifact_deleted(told)
    try:
        report = store.cleanup(operation)
    finally:
        store.close()
    print(json.dumps({"report": report.as_dict()}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
