"""One part's bytes on their way to S3, in memory of their own, given back to the system
whole when closed.

Why not a ``bytearray``: glibc serves an allocation of a few MiB from its heaps once a block
that large has been freed (its mmap threshold rises to the largest freed), and a freed block
stays in the heap of the thread that made it. Parts are filled on one thread and freed on
another, so a 1 GiB upload grew a server by 90 to 116 MB, and left 32 to 57 MB behind, where
the writer holds 40 MiB of parts at most. An anonymous mapping is unmapped when closed.
"""

from __future__ import annotations

import contextlib
import io
import mmap
from collections.abc import Iterator

from ephemera.blobs.s3_requests import PART_SIZE, content_md5

BLOCK = 64 * 1024  # the most one read of a body copies out
COPIED_BODY = 64 * 1024  # a body up to this size is sent as bytes, in one write


class PartBuffer:
    """Up to ``capacity`` bytes, filled from the start; its pages are touched only as filled."""

    def __init__(self, capacity: int = PART_SIZE) -> None:
        self._map = mmap.mmap(-1, capacity)
        self._capacity = capacity
        self._length = 0

    def __len__(self) -> int:
        return self._length

    @property
    def full(self) -> bool:
        return self._length == self._capacity

    def fill(self, data: memoryview) -> memoryview:
        """Copy in as much of ``data`` as fits; return the rest."""
        n = min(len(data), self._capacity - self._length)
        self._map[self._length : self._length + n] = data[:n]
        self._length += n
        return data[n:]

    def clear(self) -> None:
        """Empty it, to be filled again (its pages stay mapped)."""
        self._length = 0

    def view(self) -> memoryview:
        """The bytes filled so far (release it, or let it go, before ``close``)."""
        return memoryview(self._map)[: self._length]

    @contextlib.contextmanager
    def body(self) -> Iterator[bytes | PartBody]:
        """The bytes filled so far as a request body: a copy if they are few, else a file that
        reads them from here, a block at a time (botocore sends a file after the server's
        100 Continue, one round trip more)."""
        if self._length <= COPIED_BODY:
            yield bytes(self.view())
            return
        reader = PartBody(self.view())
        try:
            yield reader
        finally:
            reader.close()

    def md5(self) -> str:
        """Content-MD5 of the bytes filled so far."""
        return content_md5(self.view())

    def close(self) -> None:
        self._length = 0
        # A view still held elsewhere (a body in a traceback, say) keeps the mapping alive:
        # it is then unmapped when the last of them goes, rather than raising here.
        with contextlib.suppress(BufferError):
            self._map.close()


class PartBody(io.RawIOBase):
    """A part as botocore takes a body: a seekable file of known length.

    Botocore reads it to sign it, rewinds it to send it and again to retry. A read copies out
    at most ``BLOCK`` bytes (a raw file may return fewer than asked): botocore asks for 1 MiB
    at a time to sign, and blocks that large are the ones malloc keeps once freed.
    """

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()  # reads until the end, through the reads below
        end = min(self._pos + size, self._pos + BLOCK, len(self._view))
        data = bytes(self._view[self._pos : end])
        self._pos = max(self._pos, end)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._view.release()
        super().close()
