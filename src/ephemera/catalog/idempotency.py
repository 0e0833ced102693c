"""Idempotency keys: reserve one for a request, record its answer with the resource, forget.

A key row is a reservation while a request holds it (``holder`` set, ``expires_at`` the end
of the hold), and a recorded answer once that request created its resource: the answer is
written by :func:`complete`, inside the very transaction that creates the resource, so a
resource never exists without its key nor a key without its resource. A row past its
``expires_at`` is as good as absent: a crashed request's reservation lapses by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import Connection, delete, insert, select, update

from ephemera.catalog.db import Database
from ephemera.catalog.schema import idempotency_keys as keys
from ephemera.errors import Conflict

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request answered: its status, its JSON body, and a sealed secret of it."""

    status: int
    body: str
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key some request holds (``answer`` None) or has answered, until ``expires_at``."""

    request_hash: str
    body_hash: str | None
    answer: Answer | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Completion(Generic[T]):
    """Turns a held reservation into the recorded answer, in the transaction that creates
    the resource ``T``: ``answer`` renders what to replay."""

    key_id: str
    holder: str
    expires_at: datetime
    answer: Callable[[T], Answer]
    body_hash: str | None = None

    def of(self, convert: Callable[[U], T]) -> Completion[U]:
        """The same completion, for a resource the caller turns into ``T`` first."""
        answer = self.answer
        return Completion(
            self.key_id, self.holder, self.expires_at, lambda r: answer(convert(r)), self.body_hash
        )


KEY_LOST = (
    "the reservation of this Idempotency-Key lapsed before the request finished: "
    "nothing was created; send it again"
)


def reserve(
    db: Database, key_id: str, request_hash: str, holder: str, now: datetime, until: datetime
) -> KeyRecord | None:
    """Hold the key until ``until`` and return None; or the live record that has it.

    A duplicate on insert (two first requests at once on PostgreSQL) is a Conflict.
    """
    fresh = {"request_hash": request_hash, "holder": holder, "expires_at": until}
    cleared = {"body_hash": None, "status": None, "response": None, "secret": None}
    with db.write(duplicate="another request holds this Idempotency-Key") as conn:
        # A lapsed row is taken over in place: PostgreSQL re-checks the condition after a
        # concurrent taker's commit, so only one of two takers wins it.
        taken = conn.execute(
            update(keys)
            .where(keys.c.id == key_id, keys.c.expires_at <= now)
            .values(**fresh, **cleared)
        ).rowcount
        if taken:
            return None
        row = conn.execute(select(keys).where(keys.c.id == key_id)).first()
        if row is not None:
            answer = None
            if row.holder is None:
                answer = Answer(row.status, row.response, row.secret)
            return KeyRecord(row.request_hash, row.body_hash, answer, row.expires_at)
        conn.execute(insert(keys).values(id=key_id, **fresh))
    return None


def renew(db: Database, key_id: str, holder: str, until: datetime) -> bool:
    """Extend a held reservation; False if it is no longer this holder's."""
    with db.write() as conn:
        return bool(
            conn.execute(
                update(keys)
                .where(keys.c.id == key_id, keys.c.holder == holder)
                .values(expires_at=until)
            ).rowcount
        )


def release(db: Database, key_id: str, holder: str) -> None:
    """Drop a reservation whose request created nothing (already gone is fine)."""
    with db.write() as conn:
        conn.execute(delete(keys).where(keys.c.id == key_id, keys.c.holder == holder))


def complete(conn: Connection, completion: Completion[T], resource: T) -> None:
    """Record the answer for ``resource`` in the caller's transaction; Conflict if the
    reservation is no longer held (it lapsed and another request took the key)."""
    answer = completion.answer(resource)
    done = conn.execute(
        update(keys)
        .where(keys.c.id == completion.key_id, keys.c.holder == completion.holder)
        .values(
            holder=None,
            body_hash=completion.body_hash,
            status=answer.status,
            response=answer.body,
            secret=answer.secret,
            expires_at=completion.expires_at,
        )
    ).rowcount
    if not done:
        raise Conflict(KEY_LOST)


def prune(db: Database, now: datetime) -> int:
    """Forget every key past its expiry (lapsed reservations too), in one statement."""
    with db.write() as conn:
        return conn.execute(delete(keys).where(keys.c.expires_at <= now)).rowcount


class IdempotencyRows:
    """Idempotency-Key reservations and answers: :class:`~ephemera.catalog.Catalog`'s methods
    for them (one of its bases)."""

    _db: Database

    def reserve_key(
        self, key_id: str, request_hash: str, holder: str, now: datetime, until: datetime
    ) -> KeyRecord | None:
        return reserve(self._db, key_id, request_hash, holder, now, until)

    def renew_key(self, key_id: str, holder: str, until: datetime) -> bool:
        return renew(self._db, key_id, holder, until)

    def release_key(self, key_id: str, holder: str) -> None:
        release(self._db, key_id, holder)

    def prune_keys(self, now: datetime) -> int:
        return prune(self._db, now)
