"""What a resumable upload reads from, and where it remembers its upload URL.

A tus upload sends its source a chunk at a time and, after a failure, again from whatever
offset the server recorded. A path, bytes or a seekable file can be read from any offset; a
one-pass source (a pipe, a generator) keeps only the chunk not yet acknowledged, which is all
a retry can need since the server never forgets an acknowledged byte.

:class:`ResumeStore` is the URL storage of tuspy and tus-js-client: a small JSON file mapping
a fingerprint of the source to its upload's URL, so another run continues the upload.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ephemera.client.transfer import CHUNK_SIZE, PathLike, Source, sha256_of_file
from ephemera.errors import InvalidInput


class Body:
    """An upload's bytes, read a chunk at a time from the offsets the server tells."""

    size: int | None = None
    sha256: str | None = None
    name: str | None = None
    # A path's (resolved path, size, mtime_ns): what a ResumeStore knows the source by.
    identity: tuple[str, int, int] | None = None
    rereadable = True

    def read(self, offset: int, count: int) -> bytes:
        raise NotImplementedError

    def hashed(self) -> str | None:
        """The sha256 of a one-pass source, hashed as it was read (None otherwise)."""
        return None

    def close(self) -> None:
        pass


class BytesBody(Body):
    def __init__(self, data: bytes, sha256: str | None) -> None:
        self._data = memoryview(data)
        self.size = len(data)
        self.sha256 = sha256 or hashlib.sha256(data).hexdigest()

    def read(self, offset: int, count: int) -> bytes:
        return bytes(self._data[offset : offset + count])


class FileBody(Body):
    """A file read from ``start`` on: an opened path (closed at the end), or the caller's
    seekable file (left open)."""

    def __init__(self, file: IO[bytes], start: int, size: int, sha256: str, owned: bool) -> None:
        self._file = file
        self._start = start
        self._owned = owned
        self.size = size
        self.sha256 = sha256

    def read(self, offset: int, count: int) -> bytes:
        self._file.seek(self._start + offset)
        parts: list[bytes] = []
        while count > 0 and (part := self._file.read(count)):
            parts.append(part)
            count -= len(part)
        return b"".join(parts)

    def close(self) -> None:
        if self._owned:
            self._file.close()


class OnePassBody(Body):
    """Chunks read once: the bytes from the last acknowledged offset on are kept until the
    server has them, and the length is known when the source ends."""

    rereadable = False

    def __init__(self, chunks: Iterable[bytes], sha256: str | None) -> None:
        self._source: Iterator[bytes] = iter(chunks)
        self._buffer = bytearray()
        self._start = 0
        self._ended = False
        self._digest = hashlib.sha256()
        self.sha256 = sha256

    def read(self, offset: int, count: int) -> bytes:
        if not self._start <= offset <= self._start + len(self._buffer):
            raise InvalidInput(
                f"the server asks for offset {offset}, which a one-pass source no longer holds"
            )
        del self._buffer[: offset - self._start]
        self._start = offset
        # One byte past the chunk: a source that ends with this chunk is known to.
        while not self._ended and len(self._buffer) <= count:
            piece = next(self._source, None)
            if piece is None:
                self._ended = True
                self.size = self._start + len(self._buffer)
            elif piece:
                self._digest.update(piece)
                self._buffer += piece
        return bytes(self._buffer[:count])

    def hashed(self) -> str | None:
        return self._digest.hexdigest() if self.sha256 is None else None


def body_of(source: Source, sha256: str | None) -> Body:
    """The body for ``source``; its sha256 computed first where it can be read twice."""
    if isinstance(source, bytes | bytearray | memoryview):
        return BytesBody(bytes(source), sha256)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        file = path.open("rb")
        try:
            stat = os.fstat(file.fileno())
            if sha256 is None:
                sha256, _size = sha256_of_file(path)
        except BaseException:
            file.close()
            raise
        body = FileBody(file, 0, stat.st_size, sha256, owned=True)
        body.name = path.name
        body.identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        return body
    if hasattr(source, "read"):
        stream: IO[bytes] = source  # type: ignore[assignment]
        if _seekable(stream):
            start = stream.tell()
            size = stream.seek(0, os.SEEK_END) - start
            if sha256 is None:
                stream.seek(start)
                digest = hashlib.sha256()
                while chunk := stream.read(CHUNK_SIZE):
                    digest.update(chunk)
                sha256 = digest.hexdigest()
            return FileBody(stream, start, size, sha256, owned=False)
        return OnePassBody(iter(lambda: stream.read(CHUNK_SIZE), b""), sha256)
    return OnePassBody(source, sha256)


def known_size(source: Source) -> int | None:
    """The size of ``source`` when it tells without being read (None for one-pass ones)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    if isinstance(source, str | os.PathLike):
        return os.stat(source).st_size
    if hasattr(source, "read") and _seekable(source):
        stream: IO[bytes] = source  # type: ignore[assignment]
        start = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(start)
        return end - start
    return None


def _seekable(file: Any) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        return False


class ResumeStore:
    """Upload URLs by fingerprint, in one JSON file: an upload that stopped (its process
    killed, its network gone) is continued by the next run with the same store.

    The fingerprint covers the server's upload endpoint, the source file (path, size,
    modification time) and the upload's metadata (name, kind, ..., the sha256), so a changed
    file or another destination starts a new upload. Entries go once their upload finished.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @staticmethod
    def fingerprint(endpoint: str, identity: tuple[str, int, int], metadata: str) -> str:
        text = json.dumps([endpoint, *identity, metadata])
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        with self._locked():
            entry = self._load().get(key)
        return str(entry["url"]) if isinstance(entry, dict) and "url" in entry else None

    def put(self, key: str, url: str) -> None:
        with self._locked():
            entries = self._load()
            entries[key] = {"url": url, "stored_at": datetime.now(UTC).isoformat()}
            self._save(entries)

    def forget(self, key: str) -> None:
        with self._locked():
            entries = self._load()
            if entries.pop(key, None) is not None:
                self._save(entries)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(f"{self.path}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield

    def _load(self) -> dict[str, Any]:
        try:
            entries = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            return {}  # unreadable: uploads start over rather than fail
        return entries if isinstance(entries, dict) else {}

    def _save(self, entries: dict[str, Any]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(temporary, self.path)
