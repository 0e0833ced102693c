"""Group commit: concurrent small writes share one write transaction and its folder syncs.

SQLite has one writer at a time, and an upload's commit also renames its bytes into place
and syncs their folder inside its transaction. One transaction per upload makes every upload
wait for every other one's statements and folder sync in turn. Here the callers that arrive
while a transaction runs queue up, and the next of them leads them all through one
transaction: each caller's ``work`` runs in its own SAVEPOINT, and each folder is synced
once, at the end, before the commit.

Why the order of an upload is still safe (guarantee 3, and the upload/close race):

- The bytes are fsynced by the caller before it joins a group. Inside the transaction a
  member is admitted (its session row locked, the session open, quota and claim checked),
  its record made ``ready`` and its bytes renamed into place. The folders of all renames
  are fsynced (``fsutil.dir_syncs``) after the last member and before the COMMIT: no
  ``ready`` record commits before its bytes and their name are durable. A crash before the
  COMMIT leaves no ready record, only bytes that orphan reconciliation removes; after it,
  complete artifacts.
- A close takes the write lock too, so it runs wholly before a group (a member then finds
  its session not open: it alone fails, its bytes are never moved) or wholly after (it
  sees the members' ready records and removes their bytes), exactly as with one upload.
- Every member gets its own answer. A member that fails (session closed, quota, lost
  claim, a failed rename) is rolled back to its savepoint, with the events it deferred; the
  others go on. If the shared transaction itself fails (its folder syncs or its COMMIT),
  every member that had succeeded gets that failure, which is what it would have got alone:
  its bytes are at their key with no record, and its caller discards them (``discard``).
  They are not retried: their bytes were moved already.

Members come two ways. ``run(work)``: the work runs in its own savepoint (a streamed
upload's pending record and its commit). ``run_batched(batch, item)``: the items of one
batch function are handled by a single call, a few statements for the whole group (a body
at hand, inserted ready at once); the function answers each item alone (its session closed,
its quota), and a failure of the call fails its items only.

The COMMIT is not fsynced itself: SQLite runs in WAL mode with ``synchronous=NORMAL``
(``catalog/db.py``, kept as it was). A committed transaction survives a crash of the
process (the case of the crash tests); a power loss may take back the last ones. Guarantee
3 still holds then, since the bytes and their folder were synced before the COMMIT was
written: a lost commit leaves bytes without a record, which reconciliation removes, never
a record without bytes. What a power loss can lose is an answer already given (201 for an
artifact that is then gone). ``FULL`` would cost one WAL fsync per group, not per upload,
if that answer must outlive a power loss.

Only SQLite groups. PostgreSQL takes concurrent writers (row locks), and each keeps its own
transaction, as before.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from ephemera.catalog.db import Database, savepoint, translate
from ephemera.errors import StorageError
from ephemera.fsutil import dir_syncs, write_error

T = TypeVar("T")

# How long a leader waits for more members when the last group had company: a few
# milliseconds against an upload's tens, and only under concurrency.
LINGER_S = 0.002
# The most members of one group: the transaction holds the write lock for all of them.
MAX_MEMBERS = 64


# A statement set for many members at once: one answer per item, a result or the error
# of that item alone. Batching spends a few statements on a whole group instead of a few
# per member: under load each statement hands the GIL away and waits to get it back.
Batch = Callable[[Connection, list[Any]], list[Any]]


@dataclass
class _Member(Generic[T]):
    work: Callable[[Connection], T] | None
    duplicate: str | None
    batch: Batch | None = None
    item: Any = None
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: T | None = None
    error: BaseException | None = None


@dataclass
class GroupStats:
    """What the committer has done so far (for tests and benchmarks)."""

    transactions: int = 0
    members: int = 0


class GroupCommit:
    """Runs ``work(conn)`` in a write transaction shared with concurrent callers."""

    def __init__(self, db: Database, linger_s: float = LINGER_S) -> None:
        self._db = db
        self._linger_s = linger_s
        self._lock = threading.Lock()
        self._queue: list[_Member[Any]] = []
        self._leading = False
        self._accompanied = False
        self.stats = GroupStats()

    @property
    def queued(self) -> int:
        """Callers waiting for a group (not counting one being committed)."""
        with self._lock:
            return len(self._queue)

    def run(self, work: Callable[[Connection], T], *, duplicate: str | None = None) -> T:
        """``work``'s result once the transaction it ran in committed; its own error if it
        failed (a database error translated, with ``duplicate`` as for ``Database.write``),
        or the shared transaction's if that failed."""
        if self._db.dialect != "sqlite":
            with self._db.write(duplicate=duplicate) as conn:
                return work(conn)
        return self._join(_Member(work, duplicate))

    def run_batched(self, batch: Batch, item: Any) -> Any:
        """``batch(conn, items)``'s answer for ``item``, run once for all the items of
        ``batch`` in a group (a result, or the item's own error raised). If the batch as a
        whole fails, each of its items gets that failure."""
        if self._db.dialect != "sqlite":
            with self._db.write() as conn:
                (answer,) = batch(conn, [item])
        else:
            answer = self._join(_Member(None, None, batch, item))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _join(self, member: _Member[T]) -> T:
        with self._lock:
            self._queue.append(member)
            if not self._leading:
                self._leading = member.lead = True
        if not member.lead:
            member.done.wait()
        if member.lead:
            self._lead()
        if member.error is not None:
            raise member.error
        return member.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Run one group (this caller's, with whoever queued), then hand the lead on."""
        if self._accompanied and self._linger_s > 0:
            time.sleep(self._linger_s)
        with self._lock:
            group, self._queue = self._queue[:MAX_MEMBERS], self._queue[MAX_MEMBERS:]
        try:
            self._commit(group)
        finally:
            with self._lock:
                self._accompanied = len(group) > 1
                self.stats.transactions += 1
                self.stats.members += len(group)
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].done.set()
                else:
                    self._leading = False
            for member in group:
                member.done.set()

    def _commit(self, group: list[_Member[Any]]) -> None:
        try:
            with self._db.write() as conn, dir_syncs():
                batches: dict[Batch, list[_Member[Any]]] = {}
                for member in group:
                    if member.batch is not None:
                        batches.setdefault(member.batch, []).append(member)
                        continue
                    assert member.work is not None
                    try:
                        with savepoint(conn):
                            member.result = member.work(conn)
                    except SQLAlchemyError as exc:
                        member.error = translate(exc, member.duplicate)
                    except Exception as exc:
                        member.error = exc
                for batch, members in batches.items():
                    self._run_batch(conn, batch, members)
        except StorageError as exc:  # the COMMIT (translated): nothing of the group is in
            self._fail(group, exc)
        except OSError as exc:  # a folder sync: nothing of the group is committed
            self._fail(group, write_error("commit", exc))
        except BaseException as exc:
            self._fail(group, exc)
            if not isinstance(exc, Exception):
                raise

    @staticmethod
    def _run_batch(conn: Connection, batch: Batch, members: list[_Member[Any]]) -> None:
        try:
            with savepoint(conn):
                answers = batch(conn, [m.item for m in members])
        except SQLAlchemyError as exc:
            GroupCommit._fail(members, translate(exc))
        except Exception as exc:
            GroupCommit._fail(members, exc)
        else:
            for member, answer in zip(members, answers, strict=True):
                member.result = answer

    @staticmethod
    def _fail(group: list[_Member[Any]], exc: BaseException) -> None:
        for member in group:
            if member.error is None:
                member.error = exc
                member.result = None


_committers: weakref.WeakKeyDictionary[Database, GroupCommit] = weakref.WeakKeyDictionary()
_committers_lock = threading.Lock()


def group_commit(db: Database) -> GroupCommit:
    """The one committer of ``db`` in this process."""
    with _committers_lock:
        committer = _committers.get(db)
        if committer is None:
            committer = _committers[db] = GroupCommit(db)
        return committer
