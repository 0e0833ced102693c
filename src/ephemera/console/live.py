"""A session's live events for console pages (``console.js`` follows them and refreshes the
parts of a page that show what changed). The same stream as the API's, with its limits."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response

from ephemera.console.auth import Console
from ephemera.http.events import event_streams
from ephemera.models import ConsoleLogin
from ephemera.store.events import parse_last_event_id


def events_url(session_id: str) -> str:
    return f"/console/sessions/{session_id}/events"


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store
    streams = event_streams(store)

    @router.get("/sessions/{session_id}/events")
    def session_events(
        session_id: str,
        last_event_id: str | None = Header(None, alias="Last-Event-ID"),
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        console.workspace(session_id, login)
        after = parse_last_event_id(last_event_id)
        return streams.respond(
            session_id, lambda: store.open_console_events(session_id, login, after)
        )
