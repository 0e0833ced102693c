"""Fakes that ship with the library, for fast tests of code built on ephemera."""

from __future__ import annotations

import hashlib
import io
import mimetypes
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from ephemera.blobs.memory import MemoryBlobStore
from ephemera.models import Artifact, ArtifactState, StorageClass
from ephemera.processors import TaskCancelled, TaskFailed

__all__ = ["ManualClock", "MemoryBlobStore", "MemoryTaskContext"]


class ManualClock:
    """A clock that moves only when told to.

    It starts at the real present, so that file times (which the blob store takes from the
    system) and the clock agree until a test moves the clock on.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def catch_up(self) -> None:
        """Move on to the real present (never back), e.g. after a slow set-up, so that the
        clock again agrees with the times the file system gives what is written next."""
        self._now = max(self._now, datetime.now(UTC))


class MemoryTaskContext:
    """A task context over bytes in memory: run a processor without a store or a worker.

    ``inputs`` maps artifact IDs to (name, bytes); outputs are kept in ``outputs`` by name.
    """

    def __init__(
        self,
        inputs: Mapping[str, tuple[str, bytes]],
        *,
        task_id: str = "task",
        session_id: str = "session",
        kind: str = "input",
    ) -> None:
        self.task_id = task_id
        self.session_id = session_id
        self._data = {aid: data for aid, (_, data) in inputs.items()}
        now = datetime.now(UTC)
        self.inputs = [
            _memory_artifact(aid, session_id, name, kind, data, now)
            for aid, (name, data) in inputs.items()
        ]
        self.outputs: dict[str, bytes] = {}
        self.output_artifacts: dict[str, Artifact] = {}
        self.progress_log: list[tuple[int, int]] = []
        self.cancelled = False

    def input(self, artifact_id: str) -> Artifact:
        for artifact in self.inputs:
            if artifact.id == artifact_id:
                return artifact
        raise TaskFailed(f"artifact {artifact_id} is not an input of this task")

    def open_input(self, artifact_id: str) -> BinaryIO:
        return io.BytesIO(self.read_input(artifact_id))

    def read_input(self, artifact_id: str) -> bytes:
        self.input(artifact_id)
        return self._data[artifact_id]

    def write_output(
        self,
        name: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        kind: str = "output",
        content_type: str | None = None,
    ) -> Artifact:
        self.check_cancelled()
        if isinstance(data, bytes):
            content = data
        elif hasattr(data, "read"):
            content = data.read()
        else:
            content = b"".join(data)
        artifact = _memory_artifact(
            f"out-{len(self.outputs)}",
            self.session_id,
            name,
            kind,
            content,
            datetime.now(UTC),
            content_type,
        )
        self.outputs[name] = content
        self.output_artifacts[name] = artifact
        return artifact

    def progress(self, done: int, total: int) -> None:
        self.progress_log.append((done, total))
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelled


def _memory_artifact(
    aid: str,
    session_id: str,
    name: str,
    kind: str,
    data: bytes,
    now: datetime,
    content_type: str | None = None,
) -> Artifact:
    return Artifact(
        id=aid,
        session_id=session_id,
        name=name,
        kind=kind,
        content_type=content_type or mimetypes.guess_type(name)[0] or "application/octet-stream",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        storage_class=StorageClass.PERSISTENT,
        state=ArtifactState.READY,
        created_at=now,
        expires_at=None,
        retain_until=None,
    )
