"""Idempotency keys: a request that may be retried names itself, and a retry repeats its answer.

A key belongs to one caller (``scope``, e.g. a hash of the credential) and one route, so two
callers never collide; on a session's routes, to that session's incarnation too, so a session
re-created under a closed one's ID never replays the closed one's answers. :func:`reserve`
decides, before any work::

    no live key            -> a Reservation: do the work, and complete the key with the
                              resource in the transaction that creates it (or release it)
    answered, same request -> the KeyRecord: answer it again, create nothing
    answered or held, another request  -> IdempotencyKeyReused (nothing created)
    held by a running request          -> IdempotencyKeyInUse (send it again later)

A reservation lasts ``HOLD_S`` (renewed while an upload streams), so one left by a crashed
process lapses by itself; an answered key lasts ``idempotency_ttl_s`` from the first request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ephemera.catalog import KEY_LOST, Answer, Completion, KeyRecord
from ephemera.context import Context
from ephemera.errors import Conflict, IdempotencyKeyInUse, IdempotencyKeyReused
from ephemera.models import Artifact
from ephemera.store.sessions import session_not_found

T = TypeVar("T")

__all__ = [
    "HOLD_S",
    "KEY_LOST",
    "Answer",
    "Completion",
    "KeyRecord",
    "Replayed",
    "Reservation",
    "UploadKey",
    "digest",
    "reserve",
    "seal",
    "unseal",
]

# How long a reservation holds without renewal: far longer than a session creation or a task
# submission takes; an upload renews it every HOLD_S / 3 while its body streams.
HOLD_S = 60
# The running request may finish any moment: there is no better time to promise.
RETRY_AFTER_S = 1

REUSED = (
    "this Idempotency-Key was used for another request (other parameters or body): "
    "use a new key for a new request"
)
IN_USE = "a request with this Idempotency-Key is still running: send it again later"


@dataclass(frozen=True, slots=True)
class Reservation:
    """A key this request holds; its answer, once recorded, lasts until ``expires_at``."""

    key_id: str
    holder: str
    expires_at: datetime

    def completion(self, answer: Callable[[T], Answer]) -> Completion[T]:
        return Completion(self.key_id, self.holder, self.expires_at, answer)


@dataclass(frozen=True, slots=True)
class UploadKey:
    """An upload's key: the reservation it completes, or the answered record it repeats
    (then its body is hashed, compared with the first one's, and discarded)."""

    completion: Completion[Artifact] | None = None
    recorded: KeyRecord | None = None


class Replayed(Exception):
    """The request repeats one already answered: answer ``record`` again; nothing was created."""

    def __init__(self, record: KeyRecord) -> None:
        super().__init__("replayed")
        self.record = record


def digest(value: Mapping[str, Any]) -> str:
    """A stable sha256 of JSON-like parts (the parts of a request that make it the same)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def key_id(scope: str, route: str, key: str) -> str:
    return hashlib.sha256("\0".join((scope, route, key)).encode()).hexdigest()


def reserve(
    ctx: Context,
    scope: str,
    route: str,
    key: str,
    request_hash: str,
    session_id: str | None = None,
) -> Reservation | KeyRecord:
    """Hold ``key`` for this request, or the answered record a retry repeats (see above);
    with ``session_id``, within that session's current incarnation."""
    now = ctx.clock.now()
    if session_id is not None:
        row = ctx.catalog.get_session_row(session_id)
        if row is None:
            raise session_not_found(session_id)
        # Set once at creation and never equal for two sessions, unlike created_at (a coarse
        # clock gives a re-created session the same one): it names this incarnation.
        route = f"{route}\0{row.token_hash}"
    kid = key_id(scope, route, key)
    holder = secrets.token_hex(16)
    try:
        record = ctx.catalog.reserve_key(
            kid, request_hash, holder, now, now + timedelta(seconds=HOLD_S)
        )
    except Conflict:
        # Two first requests at once (PostgreSQL): the other one inserted first.
        raise IdempotencyKeyInUse(IN_USE, RETRY_AFTER_S) from None
    if record is None:
        return Reservation(kid, holder, now + timedelta(seconds=ctx.settings.idempotency_ttl_s))
    if record.request_hash != request_hash:
        raise IdempotencyKeyReused(REUSED)
    if record.answer is None:
        raise IdempotencyKeyInUse(IN_USE, RETRY_AFTER_S)
    return record


def renew(ctx: Context, reservation: Reservation) -> bool:
    until = ctx.clock.now() + timedelta(seconds=HOLD_S)
    return ctx.catalog.renew_key(reservation.key_id, reservation.holder, until)


def release(ctx: Context, reservation: Reservation) -> None:
    ctx.catalog.release_key(reservation.key_id, reservation.holder)


def upload_body_hash(asked: Mapping[str, Any], sha256: str) -> str:
    """What makes two uploads the same: the metadata they ask for and their bytes."""
    return digest({**asked, "sha256": sha256})


def check_replay(recorded: KeyRecord, body_hash: str) -> Replayed:
    """The replay of ``recorded`` for a body that hashes to ``body_hash``; or
    IdempotencyKeyReused for another body."""
    if not hmac.compare_digest(recorded.body_hash or "", body_hash):
        raise IdempotencyKeyReused(REUSED)
    return Replayed(recorded)


# -- sealed secrets ----------------------------------------------------------------------------
# A session's token is shown once and stored only hashed. For a replay of its creation to hand
# it out again, it is kept sealed with a key derived from the caller's own credential (which
# the database holds only hashed): only the same caller, presenting the same credential, can
# open it; the database alone cannot.

_SALT = 16
_TAG = 16


def _stream(key: bytes, length: int) -> bytes:
    count = (length + 31) // 32
    blocks = (hmac.digest(key, b"pad" + i.to_bytes(4, "big"), "sha256") for i in range(count))
    return b"".join(blocks)[:length]


def seal(secret: str, credential: str) -> str:
    salt = secrets.token_bytes(_SALT)
    key = hmac.digest(credential.encode(), b"ephemera idempotency\0" + salt, "sha256")
    plain = secret.encode()
    if len(plain) > 1024:
        raise ValueError("secret too long to seal")
    cipher = bytes(a ^ b for a, b in zip(plain, _stream(key, len(plain)), strict=True))
    tag = hmac.digest(key, b"tag" + cipher, "sha256")[:_TAG]
    return base64.urlsafe_b64encode(salt + tag + cipher).decode()


def unseal(sealed: str, credential: str) -> str | None:
    """The sealed secret, or None if ``credential`` is not the one it was sealed with."""
    raw = base64.urlsafe_b64decode(sealed.encode())
    salt, tag, cipher = raw[:_SALT], raw[_SALT : _SALT + _TAG], raw[_SALT + _TAG :]
    key = hmac.digest(credential.encode(), b"ephemera idempotency\0" + salt, "sha256")
    if not hmac.compare_digest(tag, hmac.digest(key, b"tag" + cipher, "sha256")[:_TAG]):
        return None
    return bytes(a ^ b for a, b in zip(cipher, _stream(key, len(cipher)), strict=True)).decode()


class IdempotencyMethods:
    """The Idempotency-Key part of :class:`~ephemera.store.Store` (its base class)."""

    context: Context

    def reserve_key(
        self,
        scope: str,
        route: str,
        key: str,
        request_hash: str,
        *,
        session_id: str | None = None,
    ) -> Reservation | KeyRecord:
        """Hold an Idempotency-Key of caller ``scope`` on ``route`` for this request; on a
        route of session ``session_id``, for this incarnation of it only (NotFound if gone).

        A Reservation: do the work, passing ``reservation.completion(answer)`` to the
        creation, or :meth:`release_key` if it creates nothing. A KeyRecord: the request
        repeats an answered one (same ``request_hash``): answer it again. Another request
        under the key is IdempotencyKeyReused; one still running, IdempotencyKeyInUse.
        """
        return reserve(self.context, scope, route, key, request_hash, session_id)

    def renew_key(self, reservation: Reservation) -> bool:
        """Keep holding a reservation (a long upload); False once it is lost."""
        return renew(self.context, reservation)

    def release_key(self, reservation: Reservation) -> None:
        """Let a retry proceed: this request created nothing."""
        release(self.context, reservation)
