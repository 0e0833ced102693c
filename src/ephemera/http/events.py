"""``GET /sessions/{sid}/events``: a session's events as Server-Sent Events (sse-starlette).

The stream waits on the catalog's wake-ups (after each commit in this process; LISTEN/NOTIFY
across replicas on PostgreSQL), reads the log again at least every ``event_poll_s``, pings
every ``event_ping_s``, and ends after ``session.closed``, when the client goes away, when a
write waits longer than ``event_send_timeout_s`` (a client that stopped reading), or when
the server shuts down (sse-starlette ends every stream then, so shutdown never waits on one).
Streams are counted (``ephemera.http.streams``), and their reads of the log run on a few
threads of their own, so that many streams never take every database connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from ephemera.http.credentials import Credential
from ephemera.http.openapi import operation_id
from ephemera.http.ratelimit import auth_failures
from ephemera.http.routes import ERRORS
from ephemera.http.streams import StreamSlot, StreamSlots
from ephemera.models import Event
from ephemera.store import Store
from ephemera.store.events import READ_LIMIT, EventFeed, parse_last_event_id

log = logging.getLogger("ephemera.http.events")

# Threads that read the log for all streams of the process: below the connection pool's
# size, so requests always find a connection however many streams wait for a read.
LOG_READERS = 4

EVENT_TYPES = (
    "session.opened",
    "session.closing",
    "session.closed",
    "artifact.created",
    "artifact.deleted",
    "task.state",
    "task.progress",
    "reset",
)

STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An endless `text/event-stream`: each event has an `id:` (resume with "
        "`Last-Event-ID`), an `event:` type (" + ", ".join(EVENT_TYPES) + ") and JSON `data:`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def sse(event: Event) -> ServerSentEvent:
    data = {**event.data, "at": event.at.isoformat()}
    return ServerSentEvent(data=json.dumps(data), id=str(event.id), event=event.type)


class EventStream(EventSourceResponse):
    """An event stream's answer: its slot frees when it ends, however it ends."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], slot: StreamSlot, **kw: Any):
        super().__init__(content, **kw)
        self._slot = slot
        # Dropped unsent (its request cancelled once the slot was taken): freed all the same.
        weakref.finalize(self, slot.release)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info(
                "an event stream of session %s ended: its client stopped reading",
                self._slot.session_id,
                extra={"action": "events"},
            )
        finally:
            self._slot.release()


async def follow(
    feed: EventFeed, poll_s: float, readers: anyio.CapacityLimiter
) -> AsyncIterator[ServerSentEvent]:
    with feed.wakeups(asyncio.get_running_loop()) as wakeup:
        if feed.reset is not None:
            yield sse(feed.reset)
        while True:
            found = await anyio.to_thread.run_sync(feed.read, limiter=readers)
            for event in found:
                yield sse(event)
            if feed.ended:
                return
            if len(found) < READ_LIMIT:
                await wakeup.wait_async(poll_s)


class EventStreams:
    """The streams of one store's routers (the API's and the console's): one count of
    slots and one set of log readers, so that every face together stays within limits."""

    def __init__(self, store: Store) -> None:
        settings = store.settings
        self._settings = settings
        self._slots = StreamSlots(settings.event_streams_max, settings.event_streams_per_session)
        self._readers = anyio.CapacityLimiter(LOG_READERS)

    def respond(self, session_id: str, open_feed: Callable[[], EventFeed]) -> EventStream:
        """The stream of ``open_feed()``'s events, once a slot is free (429 if none is)."""
        settings = self._settings
        slot = self._slots.take(session_id)
        try:
            # The start is fixed before the answer begins: once the client has the headers,
            # it misses nothing that commits after.
            feed = open_feed()
        except BaseException:
            slot.release()
            raise
        return EventStream(
            follow(feed, settings.event_poll_s, self._readers),
            slot,
            ping=settings.event_ping_s,
            send_timeout=settings.event_send_timeout_s,
        )


_streams: weakref.WeakKeyDictionary[Store, EventStreams] = weakref.WeakKeyDictionary()
_streams_lock = threading.Lock()


def event_streams(store: Store) -> EventStreams:
    """The one :class:`EventStreams` of a store's routers."""
    with _streams_lock:
        streams = _streams.get(store)
        if streams is None:
            streams = _streams[store] = EventStreams(store)
        return streams


def events_router(store: Store) -> APIRouter:
    streams = event_streams(store)
    router = APIRouter(
        responses=ERRORS,
        dependencies=[Depends(auth_failures(store).gate)],
        generate_unique_id_function=operation_id,
    )

    @router.get(
        "/sessions/{session_id}/events",
        tags=["events"],
        response_class=EventSourceResponse,
        responses=STREAM_RESPONSE,
    )
    def stream_events(
        session_id: str,
        token: Credential,
        last_event_id_header: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                description="Resume after this event (browsers send it when they reconnect)",
            ),
        ] = None,
        last_event_id: Annotated[
            str | None,
            Query(description="Resume after this event, for clients that cannot set headers"),
        ] = None,
    ) -> EventSourceResponse:
        """Follow the session live: task progress and states, artifacts created and deleted,
        the session closing and closed (the stream ends after it).

        Without an event ID the stream starts now; with one, it first sends every event after
        it that is still kept (``event_retention_s``), or a ``reset`` event when some are not.
        A server serves at most ``event_streams_max`` streams at once, and
        ``event_streams_per_session`` of one session: 429 beyond.
        """
        store.authenticate(session_id, token)
        after = parse_last_event_id(last_event_id_header or last_event_id)
        return streams.respond(session_id, lambda: store.open_events(session_id, token, after))

    return router
