"""Run one cleanup on a store and tell each artifact it deleted; optionally die mid-batch.

``python -m tests.acceptance.dying_cleaner DATA_DIR OPERATION KILL_AFTER``: prints one JSON
line per deleted artifact as its hook tells it (so what a killed run reported survives it),
then the report. With ``KILL_AFTER`` > 0 the blob store SIGKILLs this process after that
many unlinks, part-way through the batch that crosses it, once every earlier batch was told.
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
from typing import Any

from ephemera import Settings, Store
from ephemera.blobs import BlobStore
from ephemera.hooks import ArtifactDeleted


class Told:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, event: ArtifactDeleted) -> None:
        line = {"session_id": event.session_id, "id": event.artifact_id, "size": event.size}
        print(json.dumps({"deleted": line}), flush=True)
        with self._lock:
            self.count += 1


class DyingBlobs:
    """The local blob store, until ``kill_after`` unlinks: then the process is killed."""

    def __init__(self, blobs: BlobStore, kill_after: int, told: Told) -> None:
        self._blobs = blobs
        self._kill_after = kill_after
        self._told = told
        self._unlinked = 0

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        if self._kill_after and self._unlinked + len(keys) > self._kill_after:
            # The local store unlinks folder by folder, by name: this is its order.
            first = sorted(keys)[: self._kill_after - self._unlinked]
            self._blobs.delete_many(first)
            deadline = time.monotonic() + 30
            while self._told.count < self._unlinked and time.monotonic() < deadline:
                time.sleep(0.001)  # earlier batches' records may still be being dropped
            print(json.dumps({"killed_after": len(first), "of": len(keys)}), file=sys.stderr)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        failed = self._blobs.delete_many(keys)
        self._unlinked += len(keys)
        return failed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)


def main(data_dir: Path, operation: str, kill_after: int) -> None:
    opened = Store.open(Settings(data_dir=data_dir))
    told = Told()
    store = Store(opened.catalog, DyingBlobs(opened.blobs, kill_after, told), opened.settings)
    store.hooks.on_artifact_deleted(told)
    try:
        report = store.cleanup(operation)
    finally:
        store.close()
    print(json.dumps({"report": report.as_dict()}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
