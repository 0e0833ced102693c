"""An event stream whose client stopped reading ends after ``event_send_timeout_s`` and gives
its slot back. The app is driven as an ASGI server drives it: a client that stopped reading
is a ``send`` that never returns once its socket buffers are full."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ephemera import Store
from ephemera.http import create_app
from tests.asgi import http_scope
from tests.conftest import MakeSettings

Message = dict[str, Any]


async def request(
    app: Any, token: str, *, stall: bool, started: asyncio.Event | None = None
) -> tuple[list[Message], float]:
    """GET the events of s1; with ``stall``, every write of the body blocks for good.
    The messages sent, and how long the app took to return. ``started`` is set with the
    answer's headers."""
    sent: list[Message] = []
    asked = False

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)
        if started is not None and message["type"] == "http.response.start":
            started.set()
        if stall and message["type"] == "http.response.body":
            await asyncio.Event().wait()

    scope = http_scope(
        "GET",
        "/api/v1/sessions/s1/events",
        [(b"authorization", f"Bearer {token}".encode())],
    )
    began = time.monotonic()
    await app(scope, receive, send)
    return sent, time.monotonic() - began


def status(sent: list[Message]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_a_stream_whose_client_stopped_reading_ends_and_frees_its_slot(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(
        event_send_timeout_s=0.5, event_ping_s=0.2, event_streams_per_session=1
    )
    with Store.open(settings) as store:
        token = store.create_session("s1").token
        app = create_app(store)

        async def main() -> None:
            answered = asyncio.Event()
            stalled = asyncio.create_task(request(app, token, stall=True, started=answered))
            await asyncio.wait_for(answered.wait(), 5)
            # The stalled stream holds the session's one slot while it lasts.
            refused, _ = await asyncio.wait_for(request(app, token, stall=False), 5)
            assert status(refused) == 429
            # Its first write (a ping) never completes: ended after the send timeout.
            sent, took = await asyncio.wait_for(stalled, 5)
            assert status(sent) == 200
            # (A ping interval, the send timeout, and room for a loaded machine.)
            assert took < 0.2 + 0.5 + 3
            # The slot is back: a new stream of the session is served.
            served, _ = await asyncio.wait_for(request(app, token, stall=True), 5)
            assert status(served) == 200

        asyncio.run(main())
