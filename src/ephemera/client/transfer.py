"""Bytes in and out, streamed and checked: an upload's sha256 is known before it is sent
wherever the source allows, and a download is checked against its ETag (the sha256) before
the caller has the last of it."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from ephemera.errors import ChecksumMismatch

CHUNK_SIZE = 1024 * 1024

# What an upload accepts: a path, a binary file, bytes, or chunks.
Source = str | os.PathLike[str] | BinaryIO | IO[bytes] | Iterable[bytes] | bytes
PathLike = str | os.PathLike[str]


@dataclass
class Outgoing:
    """An upload body about to be sent.

    ``sha256`` is sent with the request, so the server stores the bytes only if they hash to
    it. A source that can be read only once (a pipe, a generator) cannot be hashed first:
    ``hashed`` then hashes it on the way, and the caller compares with what the server
    recorded afterwards.
    """

    chunks: Iterable[bytes]
    sha256: str | None
    size: int | None
    name: str | None
    hashed: Any = None  # hashlib's sha256 object, when hashing on the way

    def sent_sha256(self) -> str | None:
        return None if self.hashed is None else str(self.hashed.hexdigest())


def sha256_of_file(path: PathLike) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _read(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_SIZE):
        yield chunk


def _file_chunks(path: PathLike) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from _read(f)


def _hashing(chunks: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def outgoing(source: Source, sha256: str | None = None) -> Outgoing:
    """The body for ``source``, its sha256 computed first where it can be read twice."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return Outgoing([data], sha256 or hashlib.sha256(data).hexdigest(), len(data), None)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if sha256 is None:
            sha256, size = sha256_of_file(path)
        else:
            size = path.stat().st_size
        return Outgoing(_file_chunks(path), sha256, size, path.name)
    if hasattr(source, "read"):
        file: IO[bytes] = source  # type: ignore[assignment]
        if sha256 is None and _seekable(file):
            start = file.tell()
            digest, size = hashlib.sha256(), 0
            for chunk in _read(file):
                digest.update(chunk)
                size += len(chunk)
            file.seek(start)
            return Outgoing(_read(file), digest.hexdigest(), size, None)
        return _on_the_way(_read(file), sha256)
    return _on_the_way(source, sha256)


def _on_the_way(chunks: Iterable[bytes], sha256: str | None) -> Outgoing:
    if sha256 is not None:
        return Outgoing(chunks, sha256, None, None)
    digest = hashlib.sha256()
    return Outgoing(_hashing(chunks, digest), None, None, None, hashed=digest)


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def replayable(source: Source) -> Callable[[], Source] | None:
    """How to read ``source`` again from its start, for sending it again; None for a
    one-pass source (a pipe, a generator), which can be sent only once."""
    if isinstance(source, bytes | bytearray | memoryview | str | os.PathLike):
        return lambda: source
    if hasattr(source, "read"):
        file: IO[bytes] = source  # type: ignore[assignment]
        if _seekable(file):
            start = file.tell()

            def rewound() -> Source:
                file.seek(start)
                return file

            return rewound
    return None


def link_sha256(url: str) -> str | None:
    """The sha256 a signed link names (its ``sha256`` query value), if it names one."""
    values = parse_qs(urlsplit(url).query).get("sha256", [])
    return values[0] if len(values) == 1 and len(values[0]) == 64 else None


def etag_sha256(etag: str | None) -> str:
    """The sha256 an ETag names (ephemera's ETags are the quoted sha256)."""
    value = (etag or "").strip().removeprefix("W/").strip('"')
    if len(value) != 64:
        raise ChecksumMismatch(f"the answer carries no sha256 ETag to verify against: {etag!r}")
    return value


def mismatch(expected: str, got: str, what: str) -> ChecksumMismatch:
    return ChecksumMismatch(f"{what}: sha256 {got} received, {expected} expected")


class Verifier:
    """Hashes a download as it passes and holds back its last chunk until the whole body
    hashed right, so a reader of the chunks never completes a wrong body."""

    def __init__(self, expected: str, what: str) -> None:
        self.expected = expected
        self.what = what
        self._digest = hashlib.sha256()
        self._held: bytes | None = None

    def feed(self, chunk: bytes) -> bytes | None:
        """The chunk to pass on now (the previous one), if any."""
        self._digest.update(chunk)
        out, self._held = self._held, chunk
        return out

    def finish(self) -> bytes | None:
        """The last chunk, once the whole body hashed to the expected sha256."""
        got = self._digest.hexdigest()
        if got != self.expected:
            raise mismatch(self.expected, got, self.what)
        return self._held


def verified(chunks: Iterable[bytes], verifier: Verifier) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk and (out := verifier.feed(chunk)) is not None:
            yield out
    if (last := verifier.finish()) is not None:
        yield last


async def averified(chunks: AsyncIterator[bytes], verifier: Verifier) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk and (out := verifier.feed(chunk)) is not None:
            yield out
    if (last := verifier.finish()) is not None:
        yield last


class PartFile:
    """A download's destination while it arrives: a hidden file beside the target, renamed
    onto it only once the bytes are verified, and removed on any failure, so the target
    either holds the verified bytes or is left as it was."""

    def __init__(self, target: PathLike) -> None:
        self.target = Path(target)
        fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=self.target.parent)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)

    def commit(self) -> Path:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path, self.target)
        return self.target

    def discard(self) -> None:
        self.file.close()
        with suppress(FileNotFoundError):
            self.path.unlink()


def into_file(target: PathLike, write_all: Callable[[PartFile], None]) -> Path:
    part = PartFile(target)
    try:
        write_all(part)
    except BaseException:
        part.discard()
        raise
    return part.commit()
