"""The parts of one multipart upload on their way to S3, a bounded number at a time.

The S3 writer hands each part over as it fills and goes on filling the next while the part
goes up on a thread of its own. At most ``limit`` parts are in flight, each held in memory
until S3 has it: handing one more over first waits for one to land. A part handed over comes
back (``release``, on the caller's thread) once it has landed, failed or been dropped. With
``limit`` 0 each part goes up in the caller's thread before ``submit`` returns (one at a
time, as a plain loop would).

The first part that fails fails them all: its error is raised by the next ``submit``,
``send`` or ``wait``, and the caller aborts the upload; ``close`` first waits for the parts
still in flight, so none lands after the abort.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ephemera.blobs.s3_buffer import PartBuffer

# Sends one part (its number, its bytes) and returns the ETag S3 gave it.
SendPart = Callable[[int, PartBuffer], str]
# Takes back a part handed over, done with.
Release = Callable[[PartBuffer], None]


class PartUploads:
    def __init__(self, send: SendPart, limit: int, release: Release) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 or more")
        self._send = send
        self._release = release
        self._limit = limit
        self._pool: ThreadPoolExecutor | None = None  # made with the first part in flight
        self._flying: dict[Future[str], tuple[int, PartBuffer]] = {}  # part number, bytes
        self._etags: dict[int, str] = {}

    @property
    def in_flight(self) -> int:
        """Bytes of the parts handed over and not yet seen to land (so still held)."""
        return sum(len(body) for _number, body in self._flying.values())

    def submit(self, number: int, body: PartBuffer) -> None:
        """Send this part in the background; it comes back through ``release``."""
        if self._limit == 0:
            try:
                self.send(number, body)
            finally:
                self._release(body)
            return
        try:
            self._collect(block=len(self._flying) >= self._limit)
        except BaseException:
            self._release(body)
            raise
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._limit, thread_name_prefix="ephemera-s3-part")
        self._flying[self._pool.submit(self._send, number, body)] = (number, body)

    def send(self, number: int, body: PartBuffer) -> None:
        """Send this part now, in this thread, once every part in flight has landed.

        A part number sent again replaces the earlier upload of that part (as S3 does)."""
        self.wait()
        self._etags[number] = self._send(number, body)

    def wait(self) -> None:
        """Return once every part handed over has landed; raise the first failure."""
        while self._flying:
            self._collect(block=True)

    def listed(self) -> list[dict[str, object]]:
        """The parts as CompleteMultipartUpload takes them (call ``wait`` first)."""
        return [{"PartNumber": n, "ETag": e} for n, e in sorted(self._etags.items())]

    def close(self) -> None:
        """Stop: parts not yet started are dropped; returns once those under way have ended."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        flying, self._flying = self._flying, {}
        for _number, body in flying.values():
            self._release(body)

    def _collect(self, *, block: bool) -> None:
        if block and self._flying:
            done, _ = wait(self._flying, return_when=FIRST_COMPLETED)
        else:
            done = {future for future in self._flying if future.done()}
        failure: BaseException | None = None
        for future in sorted(done, key=lambda f: self._flying[f][0]):
            number, body = self._flying.pop(future)
            self._release(body)
            error = future.exception()
            if error is not None:
                failure = failure or error
            else:
                self._etags[number] = future.result()
        if failure is not None:
            raise failure
