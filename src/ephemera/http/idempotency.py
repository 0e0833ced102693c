"""The ``Idempotency-Key`` header (draft-ietf-httpapi-idempotency-key-header) on the routes
that create: sessions, artifacts (every body form) and tasks.

A key belongs to the caller (its credential, hashed) and the route (method and path), so two
callers never collide; on a session's routes, to that session's incarnation too (an admin or
client key outlives a session, and the session's ID may be used again). The same request
again (same query, same content type, same JSON body or, for an upload, the same bytes and
metadata) answers what the first answered, with ``Idempotent-Replayed: true``, and creates
nothing; another request under the key is 422; a retry while the first still runs is 409 with
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Header, Request, Response
from pydantic import BaseModel

from ephemera.errors import Conflict
from ephemera.http.errors import InvalidHeader
from ephemera.http.receive import body_chunks
from ephemera.ids import hash_secret
from ephemera.store import Store
from ephemera.store.idempotency import (
    HOLD_S,
    KEY_LOST,
    Answer,
    KeyRecord,
    Reservation,
    digest,
    unseal,
)

T = TypeVar("T")
log = logging.getLogger("ephemera.http")

# Printable ASCII, as the draft asks; a Structured Field string's quotes are taken off.
KEY_RE = re.compile(r"[\x20-\x7e]{1,255}")
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes the request safe to retry: the same request with the same key "
        "answers the first answer again and creates nothing (1 to 255 printable ASCII "
        "characters, optionally quoted)",
    ),
]


def checked_key(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not KEY_RE.fullmatch(value):
        raise InvalidHeader("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return value


def scope_of(credential: str) -> str:
    """Who a key belongs to: the credential itself (a key, or a session's token)."""
    return "credential:" + hash_secret(credential)


def route_of(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def request_hash(request: Request, body: BaseModel | None = None) -> str:
    """What makes a request the same, as far as it is known before an upload's body: its
    query, its content type (a multipart boundary aside) and its JSON body as parsed."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/"):
        content_type = content_type.split(";", 1)[0].strip().lower()
    parts: dict[str, Any] = {
        "query": sorted(request.query_params.multi_items()),
        "content_type": content_type,
    }
    if body is not None:
        parts["body"] = body.model_dump(mode="json", exclude_unset=True)
    return digest(parts)


def reserve(
    store: Store, request: Request, credential: str, key: str, body: BaseModel | None = None
) -> Reservation | KeyRecord:
    return store.reserve_key(
        scope_of(credential),
        route_of(request),
        key,
        request_hash(request, body),
        session_id=request.path_params.get("session_id"),
    )


def replay(record: KeyRecord, credential: str) -> Response:
    """The first answer again; a sealed secret (a session's token) opened for this caller."""
    answer = record.answer
    assert answer is not None
    body = answer.body
    if answer.secret is not None:
        content = json.loads(body)
        content["token"] = unseal(answer.secret, credential)
        body = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
    return Response(
        body,
        status_code=answer.status,
        media_type="application/json",
        headers={REPLAYED_HEADER: "true"},
    )


def json_answer(status: int, render: Callable[[T], BaseModel]) -> Callable[[T], Answer]:
    return lambda resource: Answer(status, render(resource).model_dump_json())


@contextlib.contextmanager
def releasing(store: Store, held: Reservation | None) -> Iterator[None]:
    """Release the reservation if the block fails: the request created nothing, so a retry
    may go ahead at once."""
    try:
        yield
    except BaseException:
        if held is not None:
            # If even this fails, the reservation lapses after its hold.
            with contextlib.suppress(Exception):
                store.release_key(held)
        raise


@contextlib.asynccontextmanager
async def holding(store: Store, held: Reservation | None) -> AsyncIterator[None]:
    """Keep the reservation while the block runs (an upload's body may take long), and
    release it if the block fails. A hold found lost (it lapsed, and another request took the
    key) stops the block at once with Conflict: reading on could only end in that."""
    if held is None:
        yield
        return
    lost = False
    with anyio.CancelScope() as scope:

        async def renew() -> None:
            nonlocal lost
            while True:
                await asyncio.sleep(HOLD_S / 3)
                try:
                    kept = await anyio.to_thread.run_sync(store.renew_key, held)
                except Exception as exc:
                    # The database may be back at the next beat; the hold lasts till then.
                    log.warning(
                        "cannot renew an Idempotency-Key hold: %s",
                        exc,
                        extra={"action": "idempotency"},
                    )
                    continue
                if not kept:
                    lost = True
                    scope.cancel()
                    return

        keeper = asyncio.ensure_future(renew())
        try:
            yield
        except BaseException:
            keeper.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(store.release_key, held)
            raise
        finally:
            keeper.cancel()
    # Only if the block was stopped. A commit completes the key, so a renewal just after
    # finds it no longer held; but a commit runs in a worker thread, which anyio does not
    # cancel, and nothing is awaited after it: a block that committed ends as it should.
    if lost and scope.cancelled_caught:
        raise Conflict(KEY_LOST)


async def drain(store: Store, request: Request) -> None:
    """Read a body to its end without keeping it, so the connection can carry the answer;
    with ``Expect: 100-continue`` the client has not sent it, and never will."""
    if request.headers.get("expect", "").lower() == "100-continue":
        return
    async for _ in body_chunks(request, store.settings.upload_idle_timeout_s):
        pass
