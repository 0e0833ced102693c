"""A session's live events (``GET /sessions/{sid}/events``) as ``ephemera.models.Event``s.

The stream is Server-Sent Events, parsed here as the HTML standard describes the format.
A connection that drops, or a server that stops, is not the end: the stream connects again
with ``Last-Event-ID`` (after a growing delay, or the server's ``retry:``), and the server
then sends exactly what came after the last event received, so nothing is lost or repeated.
A ``reset`` event (the events after that ID are no longer kept) is passed on like any other:
the reader re-reads what it needs. The stream ends after ``session.closed``. It fails with
NotFound when the session went away while disconnected (its last events cannot be told), and
with ServerUnreachable when no connection could be made for ``reconnect_for_s``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx2

from ephemera.client.common import seg, unreachable
from ephemera.client.connection import Connection
from ephemera.client.errors import ServerUnreachable, error_of
from ephemera.errors import Unavailable
from ephemera.models import Event

CLOSED = "session.closed"
RESET = "reset"
# Waits before reconnecting: the first, doubled after each failure up to the last.
RECONNECT_S = 0.25
MAX_RECONNECT_S = 5.0
RECONNECT_FOR_S = 60.0
# Failures after which connecting again is worth it; any other error answer is final.
_PASSING = (ServerUnreachable, Unavailable)


@dataclass
class SseParser:
    """Lines of a ``text/event-stream`` in, whole messages out."""

    last_id: str | None = None
    retry_s: float | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def line(self, line: str) -> tuple[str, str, str] | None:
        """The message this line completes, as (id, event type, data), if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_s = int(value) / 1000
        return None

    def discard(self) -> None:
        """Forget a message cut short by a dropped connection (the resume sends it whole)."""
        self._data, self._event = [], ""

    def _dispatch(self) -> tuple[str, str, str] | None:
        data, event = self._data, self._event or "message"
        self._data, self._event = [], ""
        if not data:
            return None
        return (self.last_id or "", event, "\n".join(data))


def event_of(session_id: str, message: tuple[str, str, str]) -> Event:
    event_id, event_type, text = message
    data: dict[str, Any] = json.loads(text)
    at = datetime.fromisoformat(str(data.pop("at")))
    return Event(int(event_id), session_id, event_type, data, at)


class _Follow:
    """What the sync and async streams share: where to resume, and when to give up."""

    def __init__(
        self,
        session_id: str,
        last_event_id: int | None,
        reconnect_for_s: float,
        deadline: float | None,
    ) -> None:
        self.session_id = session_id
        self.deadline = deadline
        self.path = f"/sessions/{seg(session_id)}/events"
        self.last_id = last_event_id
        self.reconnect_for_s = reconnect_for_s
        self.ended = False
        self.delay_s = RECONNECT_S
        self.parser = SseParser()

    def request(self, http: httpx2.Client | httpx2.AsyncClient) -> httpx2.Request:
        headers = {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}
        timeout = None
        if self.deadline is not None:
            # A reader with a deadline hears of silence by then (and then reconnects).
            read_s = max(0.1, self.deadline - time.monotonic()) + 0.5
            timeout = httpx2.Timeout(http.timeout.connect, read=read_s)
        return http.build_request("GET", self.path, headers=headers, timeout=timeout)

    def give_up_at(self) -> float:
        give_up = time.monotonic() + self.reconnect_for_s
        return give_up if self.deadline is None else min(give_up, self.deadline)

    def accept(self, message: tuple[str, str, str]) -> Event | None:
        """The event to pass on; None for one already passed on."""
        event = event_of(self.session_id, message)
        # A reset moves the cursor wherever the server says; anything else only forward.
        if event.type != RESET and self.last_id is not None and event.id <= self.last_id:
            return None
        self.last_id = event.id
        self.delay_s = RECONNECT_S
        self.ended = event.type == CLOSED
        return event

    def _event_of(self, line: str) -> Event | None:
        message = self.parser.line(line)
        return None if message is None else self.accept(message)

    def next_delay(self) -> float:
        self.parser.discard()
        delay = self.parser.retry_s or self.delay_s
        self.delay_s = min(MAX_RECONNECT_S, self.delay_s * 2)
        return delay


class EventStream(_Follow):
    """The session's events, live: iterate for :class:`Event`s; a context manager.

    Connects on :meth:`open` (or the first ``next``): error answers then raise as usual.
    """

    def __init__(
        self,
        http: httpx2.Client,
        session_id: str,
        last_event_id: int | None = None,
        *,
        reconnect_for_s: float = RECONNECT_FOR_S,
        deadline: float | None = None,
    ) -> None:
        super().__init__(session_id, last_event_id, reconnect_for_s, deadline)
        self._http = http
        self._response: httpx2.Response | None = None

    def open(self) -> Self:
        if self._response is None and not self.ended:
            self._response = self._connect()
        return self

    def _connect(self) -> httpx2.Response:
        request = self.request(self._http)
        try:
            response = self._http.send(request, stream=True)
        except httpx2.TransportError as exc:
            raise unreachable(str(self._http.base_url), exc) from exc
        if response.status_code >= 400:
            response.read()
            response.close()
            raise error_of(response)
        return response

    def _reconnect(self) -> httpx2.Response:
        """A new connection after the last event (NotFound: the session went away
        meanwhile, and what it did in between cannot be told)."""
        give_up = self.give_up_at()
        while True:
            time.sleep(self.next_delay())
            try:
                return self._connect()
            except _PASSING:
                if time.monotonic() >= give_up:
                    raise

    def beats(self) -> Iterator[Event | None]:
        """Events, and None for each keep-alive comment and each dropped connection (so a
        reader can look at a clock)."""
        self.open()
        while self._response is not None:
            try:
                for line in self._response.iter_lines():
                    if line.startswith(":"):
                        yield None
                    elif (event := self._event_of(line)) is not None:
                        yield event
                        if self.ended:
                            break
            except httpx2.TransportError:
                yield None  # dropped (or silent past the deadline): resume below
            self._response.close()
            self._response = None if self.ended else self._reconnect()

    def __iter__(self) -> Iterator[Event]:
        return (event for event in self.beats() if event is not None)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
        self.ended = True

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncEventStream(_Follow):
    """:class:`EventStream` for asyncio: ``async for``, ``async with``."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        session_id: str,
        last_event_id: int | None = None,
        *,
        reconnect_for_s: float = RECONNECT_FOR_S,
        deadline: float | None = None,
    ) -> None:
        super().__init__(session_id, last_event_id, reconnect_for_s, deadline)
        self._http = http
        self._response: httpx2.Response | None = None

    async def open(self) -> Self:
        if self._response is None and not self.ended:
            self._response = await self._connect()
        return self

    async def _connect(self) -> httpx2.Response:
        request = self.request(self._http)
        try:
            response = await self._http.send(request, stream=True)
        except httpx2.TransportError as exc:
            raise unreachable(str(self._http.base_url), exc) from exc
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise error_of(response)
        return response

    async def _reconnect(self) -> httpx2.Response:
        give_up = self.give_up_at()
        while True:
            await asyncio.sleep(self.next_delay())
            try:
                return await self._connect()
            except _PASSING:
                if time.monotonic() >= give_up:
                    raise

    async def beats(self) -> AsyncIterator[Event | None]:
        await self.open()
        while self._response is not None:
            try:
                async for line in self._response.aiter_lines():
                    if line.startswith(":"):
                        yield None
                    elif (event := self._event_of(line)) is not None:
                        yield event
                        if self.ended:
                            break
            except httpx2.TransportError:
                yield None
            await self._response.aclose()
            self._response = None if self.ended else await self._reconnect()

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for event in self.beats():
            if event is not None:
                yield event

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()
            self._response = None
        self.ended = True

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class EventMethods(Connection):
    def events(
        self,
        session_id: str,
        *,
        last_event_id: int | None = None,
        reconnect_for_s: float = RECONNECT_FOR_S,
        deadline: float | None = None,
    ) -> EventStream:
        """The session's events as they happen (after ``last_event_id``: first the ones after
        it that are kept; ``0``: from the session's start), resumed across dropped
        connections, until the session closes. ``deadline`` (``time.monotonic()``) bounds
        how long a silent connection is waited on and reconnecting is tried."""
        return EventStream(
            self._http,
            session_id,
            last_event_id,
            reconnect_for_s=reconnect_for_s,
            deadline=deadline,
        )
