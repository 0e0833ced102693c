"""Fakes that ship with the library, for fast tests of code built on ephemera."""

from __future__ import annotations

import hashlib
import io
import mimetypes
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from ephemera.blobs import BlobStat, StagedBlob, check_key
from ephemera.errors import BlobNotFound, StorageError
from ephemera.models import Artifact, ArtifactState, StorageClass
from ephemera.processors import TaskCancelled, TaskFailed


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


class _MemoryWriter:
    def __init__(self, store: MemoryBlobStore, key: str, name: str) -> None:
        self._store = store
        self._key = key
        self._name = name
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._done = False

    @property
    def size(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError("write after commit or abort")
        self._hash.update(data)
        self._buffer += data
        self._store._staged[self._name] = len(self._buffer)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sync(self) -> None:
        if self._done:
            raise StorageError("sync after commit or abort")

    def commit(self) -> BlobStat:
        if self._done:
            raise StorageError("commit after commit or abort")
        self._done = True
        with self._store._lock:
            self._store._staged.pop(self._name, None)
            self._store._blobs[self._key] = (bytes(self._buffer), self._store._now())
        return self._store.stat(self._key)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._store._staged.pop(self._name, None)


class MemoryBlobStore:
    """A BlobStore in a dict: same contract as the real ones, for unit tests."""

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, datetime]] = {}
        self._staged: dict[str, int] = {}
        self._lock = threading.Lock()
        self._counter = 0

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)

    def writer(self, key: str) -> _MemoryWriter:
        check_key(key)
        with self._lock:
            self._counter += 1
            name = f"{self._counter}.part"
            self._staged[name] = 0
        return _MemoryWriter(self, key, name)

    def open(self, key: str) -> BinaryIO:
        try:
            return io.BytesIO(self._blobs[check_key(key)][0])
        except KeyError:
            raise BlobNotFound(f"no blob at {key}") from None

    def stat(self, key: str) -> BlobStat:
        try:
            data, modified = self._blobs[check_key(key)]
        except KeyError:
            raise BlobNotFound(f"no blob at {key}") from None
        return BlobStat(key, len(data), modified)

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(check_key(key), None)

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        for key in keys:
            self.delete(key)
        return {}

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._blobs if k.startswith(prefix)]
            for key in doomed:
                del self._blobs[key]
        return len(doomed)

    def list(self, prefix: str = "") -> Iterator[BlobStat]:
        with self._lock:
            keys = sorted(k for k in self._blobs if k.startswith(prefix))
        for key in keys:
            try:
                yield self.stat(key)
            except BlobNotFound:
                continue

    def list_children(self, prefix: str) -> Iterator[str]:
        with self._lock:
            names = {k[len(prefix) :].split("/", 1)[0] for k in self._blobs if k.startswith(prefix)}
        yield from sorted(names)

    def list_staged(self) -> Iterator[StagedBlob]:
        with self._lock:
            staged = list(self._staged.items())
        for name, size in staged:
            yield StagedBlob(name, size, self._now())

    def delete_staged(self, name: str) -> None:
        self._staged.pop(name, None)

    def check(self) -> None:
        return None


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
