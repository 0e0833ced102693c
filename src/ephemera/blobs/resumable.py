"""Capability: an upload's bytes written over many requests, durable at checkpoints.

The catalog keeps the truth: the recorded offset and ``pieces``, a JSON record of where the
bytes are, which only the backend reads. A writer appends to one upload for one claim:

- ``write`` appends; nothing is durable or counted until ``checkpoint`` returns the
  durable offset and the pieces to record. Bytes past the recorded offset never count: the
  next writer ignores or truncates them.
- ``reserve()`` (given by the caller) returns a piece number that no other writer of the
  upload ever gets; a writer names everything it creates after such numbers, so a writer
  that lost its claim (and still writes) can never change a piece another one relies on.
- ``continue_last``: the last piece's writer let go cleanly and no claim was taken since,
  so that piece may be extended (after truncating it to its recorded length); otherwise a
  new piece is started (a taken-over writer may still be writing its own).
- ``key`` is where the bytes will be committed (the artifact's key): a backend may build
  them there already, out of sight (S3: a multipart upload).
- ``assemble`` gathers the recorded bytes, whole and durable, as an ``Assembled``: the
  caller hashes them if it must, then ``commit`` puts them at the key inside the commit
  transaction (so a concurrent close either sees a ready artifact or none of its bytes).
- ``discard_upload`` removes every piece; "already gone" is success.
- A crash leaves pieces in staging; ``upload_of_staged`` names the upload a staged name
  belongs to, so orphan reconciliation spares uploads that are still open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

Pieces = dict[str, Any]


class PieceWriter(Protocol):
    @property
    def written(self) -> int:
        """The upload's offset after everything handed to ``write``."""
        ...

    def write(self, data: bytes) -> None: ...

    def checkpoint_due(self) -> bool:
        """Whether enough arrived since the last checkpoint to make one now."""
        ...

    def checkpoint(self, final: bool) -> tuple[int, Pieces]:
        """Make bytes durable; the durable offset and the pieces to record. ``final`` (the
        request ends) makes everything written durable; otherwise a backend may keep a
        remainder in memory (S3: below one part)."""
        ...

    def close(self) -> None: ...


class Assembled(Protocol):
    """An upload's recorded bytes, whole, about to be committed at their key."""

    def sha256(self) -> str:
        """Hash them again (read back)."""
        ...

    def commit(self) -> None:
        """Put them at the key, durable. Run again (a retry after a failed commit), it
        puts them there again or finds them there already."""
        ...

    def abort(self) -> None:
        """Drop what was gathered for ``commit``; never the pieces, nor bytes at the key."""
        ...


@runtime_checkable
class ResumableBlobs(Protocol):
    def append_to(
        self,
        upload_id: str,
        key: str,
        pieces: Pieces,
        offset: int,
        continue_last: bool,
        reserve: Callable[[], int],
    ) -> PieceWriter: ...

    def assemble(self, upload_id: str, pieces: Pieces, length: int, key: str) -> Assembled: ...

    def discard_upload(self, upload_id: str, pieces: Pieces) -> None: ...

    def upload_of_staged(self, name: str) -> str | None: ...
